"""Kill anywhere, resume exactly: SIGKILL a run at points spread over every stage, rerun the same
command, and compare every result file with an uninterrupted run's bytes.

The subject is the whole loop with the fake engine and stub trainer (tests/killable_run.py), so the
harness checks the orchestration (atomic files, appends, manifest, invalidation) at many points in
seconds; test_loop.py kills the real model mid-augment. CI tries 8 points; more by hand:
HUMPBACK_KILL_POINTS=60 python -m pytest tests/test_kill.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY

HERE = Path(__file__).resolve().parent
POINTS = int(os.environ.get("HUMPBACK_KILL_POINTS", "8"))
ARGS = ["export.merged=false"]
COMPARED = ["seed/train.jsonl", "corpus/segments.jsonl", "augment/pairs.jsonl", "round_01/score/scored.jsonl",
            "round_01/score/checks.jsonl", "round_01/select/curated.jsonl", "round_02/score/scored.jsonl",
            "round_02/select/curated.jsonl", "round_02/train/adapter.gguf", "round_02/train/data.jsonl",
            "ablation_random/adapter.gguf", "evaluate/metrics.json", "ifeval/ifeval.jsonl", "ifeval/metrics.json",
            "export/dataset.jsonl",
            "export/adapter/adapter_model.safetensors", "export/README.md"]


def _cmd(out: Path) -> list[str]:
    return [sys.executable, str(HERE / "killable_run.py"), str(TINY), str(out), *ARGS]


def _env() -> dict[str, str]:
    return {**os.environ, "FAKE_DELAY": "0.01", "HUMPBACK_QUIET": "1"}


def _running_stage(out: Path) -> str | None:
    try:
        stages = json.loads((out / "manifest.json").read_text())["stages"]
    except (OSError, ValueError):
        return None
    return next((k for k, v in stages.items() if v["status"] == "running"), "between stages")


def test_killed_anywhere_the_rerun_gives_the_uninterrupted_bytes(model_gguf, tmp_path):
    ref = tmp_path / "ref"
    t0 = time.time()
    subprocess.run(_cmd(ref), env=_env(), check=True)
    total = time.time() - t0
    hit = []
    for i in range(POINTS):
        out = tmp_path / f"killed{i}"
        proc = subprocess.Popen(_cmd(out), env=_env())
        time.sleep(total * (i + 0.5) / POINTS)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        hit.append(_running_stage(out))
        subprocess.run(_cmd(out), env=_env(), check=True)
        for f in COMPARED:
            assert (out / f).read_bytes() == (ref / f).read_bytes(), f"killed in {hit[-1]}: {f} differs"
        # nothing half-written left behind: temp files are removed or renamed
        assert not [p for p in out.rglob(".*") if p.is_file() and p.name != ".lock"], f"killed in {hit[-1]}"
    print(f"\nkill points: {POINTS}, stages hit: {hit}")
    assert len({h for h in hit if h}) >= min(POINTS, 4), hit


def test_a_run_stopped_by_a_full_disk_resumes_to_the_same_bytes(model_gguf, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "full"
    subprocess.run(_cmd(ref), env=_env(), check=True)
    limited = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000)); "
               f"sys.argv = {_cmd(out)[1:]!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", limited], env=_env(), capture_output=True, text=True)
    assert proc.returncode != 0 and "File too large" in proc.stderr
    subprocess.run(_cmd(out), env=_env(), check=True)
    for f in COMPARED:
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f


@pytest.mark.parametrize("processes", [1, 2])
def test_training_killed_midway_leaves_nothing_and_retrains_to_the_same_adapter(hf_weights, tmp_path, processes):
    # the real trainer and converter write through atomic_dir/atomic_path: a kill leaves no adapter;
    # with two DDP processes the kill reaches torchrun and its workers too (none left training)
    from humpback_lite.seed import load_seed

    data = tmp_path / "data.jsonl"
    rows, _ = load_seed("builtin:seed", 0, 16)
    data.write_text("".join(json.dumps({"instruction": r["instruction"], "output": r["output"]}) + "\n" for r in rows))
    env = {**os.environ, "HUMPBACK_QUIET": "1"}

    def train(out: Path) -> list[str]:
        return [sys.executable, "-m", "humpback_lite", "train", str(data), "-o", str(out), "max_steps=4",
                "batch_size=2", "max_length=128", "lora_r=4", "quantize=none", f"processes={processes}"]

    t0 = time.time()
    subprocess.run(train(tmp_path / "ref"), env=env, check=True, capture_output=True)
    total = time.time() - t0
    out = tmp_path / "killed"
    proc = subprocess.Popen(train(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(total * 0.7)
    # still at work when killed (a command that had already finished would test nothing)
    assert proc.poll() is None and not (out / "adapter.gguf").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while _training_processes(out) and time.time() < deadline:
        time.sleep(0.5)
    assert not _training_processes(out)
    # killed in training: nothing; killed in conversion: the adapter folder without a half-written .gguf
    assert not out.exists() or not [p for p in out.rglob(".*")], list(out.rglob("*"))
    if processes > 1 and not out.exists():  # killed in training: the launch's job folder (the rows) is left
        assert [p.name for p in tmp_path.glob(".killed.*")]
    subprocess.run(train(out), env=env, check=True, capture_output=True)
    for f in ("adapter_model.safetensors", "adapter.gguf"):
        assert (out / f).read_bytes() == (tmp_path / "ref" / f).read_bytes(), f
    assert not list(tmp_path.glob(".*")), "the rerun removes what the killed command left"


def _training_processes(out: Path) -> list[int]:
    """Processes still working for the killed command: its torchrun launcher and their workers,
    whose job file names `out`."""
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            job = next((a for a in cmd.split() if a.endswith("job.json")), None)
            if job and str(out) in Path(job).read_text():
                found.append(int(d.name))
        except (OSError, ValueError):
            continue
    return found
