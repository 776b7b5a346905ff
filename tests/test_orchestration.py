"""The loop's wiring with a fake engine and a stub trainer (tests/fakes.py): every stage, reruns,
invalidation, stale rounds and resume after a crash, in seconds. The same paths run with the real
model in test_loop.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY
from fakes import FakeEngine, fake_engines, fake_train_run

from humpback_lite import graph, train
from humpback_lite.loop import Loop, load_run
from humpback_lite.recipe import load_recipe
from humpback_lite.store import read_jsonl

FAST = ["export.merged=false", "evaluate.ifeval=0"]  # merging needs a real adapter; IFEval fetches its tables


@pytest.fixture(scope="module", autouse=True)
def _on_the_header_model(header_model):
    """Every loop here runs on the header-only GGUF: the fakes read no weights."""
    FAST.append(f"model={header_model}")
    yield
    FAST.remove(f"model={header_model}")


def _loop(out, *overrides, log=None):
    loop = Loop(load_recipe(TINY, [*FAST, *overrides]), out)
    loop._engines = fake_engines(log)
    return loop


def _finished(out) -> dict:
    return {k: v["finished"] for k, v in json.loads((out / "manifest.json").read_text())["stages"].items()}


@pytest.fixture(scope="module")
def stub_training():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "run", fake_train_run)
        yield


@pytest.fixture(scope="module")
def fake_run(header_model, stub_training, tmp_path_factory):
    out = tmp_path_factory.mktemp("fake") / "run"
    _loop(out).run()
    return out


def _copy(fake_run, tmp_path):
    shutil.copytree(fake_run, tmp_path / "copy")
    return tmp_path / "copy"


def _rerun(out, *overrides) -> list[str]:
    """Run again with overrides; the stages that ran, in order."""
    before = _finished(out)
    _loop(out, *overrides).run()
    after = _finished(out)
    return [s for s in after if after[s] != before.get(s)]


def test_every_planned_stage_runs_and_records_its_output_digest(fake_run):
    stages = json.loads((fake_run / "manifest.json").read_text())["stages"]
    assert list(stages) == [p.name for p in graph.plan(load_recipe(TINY, FAST))]
    assert all(s["status"] == "done" and s["output"] for s in stages.values())
    assert (fake_run / "export" / "dataset.jsonl").exists() and (fake_run / "report" / "index.html").exists()


def test_rerunning_a_finished_run_loads_no_model(fake_run, stub_training):
    log: list = []
    before = _finished(fake_run)
    _loop(fake_run, log=log).run()
    assert _finished(fake_run) == before and log == []


def test_later_rounds_check_the_same_pairs_and_reuse_the_backward_signals(header_model, stub_training, tmp_path):
    log: list = []
    out = tmp_path / "run"
    _loop(out, "curate.signals=[pmi,backward]", "evaluate.enabled=false", log=log).run()
    backward = str(out / "backward" / "adapter.gguf")
    assert [e for e in log if e == ("load", backward)] == [("load", backward)] * 2  # augment, round 1's scoring
    r1, r2 = (read_jsonl(out / f"round_0{k}" / "score" / "checks.jsonl") for k in (1, 2))
    assert r1 and [(c["kind"], c["id"]) for c in r2] == [(c["kind"], c["id"]) for c in r1]
    assert [c["signals"]["backward"] for c in r2] == [c["signals"]["backward"] for c in r1]
    s1, s2 = (read_jsonl(out / f"round_0{k}" / "score" / "scored.jsonl") for k in (1, 2))
    assert [r["signals"]["backward_lp"] for r in s2] == [r["signals"]["backward_lp"] for r in s1]


def test_engine_context_reruns_the_stages_that_use_the_engine(fake_run, stub_training, tmp_path):
    ran = _rerun(_copy(fake_run, tmp_path), "engine.n_ctx=2048")
    # the fake answers the same at any context, so select and training see identical inputs
    assert ran == ["augment", "round_01/score", "round_02/score", "evaluate", "export"]


def test_thread_count_reruns_nothing(fake_run, stub_training, tmp_path):
    assert _rerun(_copy(fake_run, tmp_path), "engine.n_threads=1") == []


def test_a_stage_that_reruns_to_the_same_bytes_invalidates_nothing_below(fake_run, stub_training, tmp_path):
    # text_field only matters for table inputs: pydoc's segments come out byte-identical
    # (export hashes the whole recipe: its model card quotes it)
    assert _rerun(_copy(fake_run, tmp_path), "data.text_field=body") == ["corpus", "export"]


def test_selection_change_retrains_from_that_round_on(fake_run, stub_training, tmp_path):
    out = _copy(fake_run, tmp_path)
    ran = _rerun(out, "curate.top_fraction=0.34")
    assert ran[:3] == ["round_01/select", "round_01/train", "round_02/score"]
    assert {"seed", "corpus", "backward", "augment", "round_00/train", "round_01/score"}.isdisjoint(ran)
    n_scored = sum(1 for s in read_jsonl(out / "round_01" / "score" / "scored.jsonl") if s["score"] is not None)
    assert len(read_jsonl(out / "round_01" / "select" / "curated.jsonl")) == max(1, round(n_scored * 0.34))


def test_lowering_rounds_leaves_later_rounds_out_of_evaluation_and_report(fake_run, stub_training, tmp_path):
    from humpback_lite.report import gather

    out = _copy(fake_run, tmp_path)
    ran = _rerun(out, "rounds=1")
    assert "evaluate" in ran and "export" in ran
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert "M2" not in metrics["models"] and [c["round"] for c in metrics["curation"]] == [1]
    g = gather(out)
    assert [c["round"] for c in g["curation"]] == [1] and "M2" not in g["train"]
    assert list(graph.iter_unplanned(list(json.loads((out / "manifest.json").read_text())["stages"]),
                                     load_recipe(out / "recipe.yaml"))) == [
        "round_02/score", "round_02/select", "round_02/train"]


def test_crash_mid_augment_resumes_to_the_uninterrupted_result(fake_run, stub_training, tmp_path, monkeypatch):
    out = tmp_path / "crashed"
    calls = {"n": 0}
    real = FakeEngine.generate

    def dies_on_the_fourth(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(FakeEngine, "generate", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        _loop(out).run()
    assert len(read_jsonl(out / "augment" / "pairs.jsonl")) == 3
    monkeypatch.setattr(FakeEngine, "generate", real)
    _loop(out).run()
    for f in ("augment/pairs.jsonl", "round_01/score/scored.jsonl", "round_02/select/curated.jsonl",
              "export/dataset.jsonl"):
        assert (out / f).read_bytes() == (fake_run / f).read_bytes(), f


def test_evaluate_command_writes_the_recipe_it_evaluated_with(fake_run, stub_training, tmp_path):
    out = _copy(fake_run, tmp_path)
    loop = load_run(out, ["evaluate.judge=base"])
    loop._engines = fake_engines()
    metrics = loop.evaluate()
    assert metrics["judge"] == "base model"
    assert "judge: base" in (out / "recipe.yaml").read_text()


def test_status_names_out_of_date_stages_and_rounds_the_recipe_no_longer_has(fake_run, stub_training, tmp_path):
    out = _copy(fake_run, tmp_path)
    assert set(load_run(out).states().values()) == {"done"}
    states = load_run(out, ["curate.top_fraction=0.34"]).states()
    assert states["round_01/score"] == "done" and states["round_01/select"] == "out of date"
    assert states["round_02/train"] == "out of date"
    states = load_run(out, ["rounds=1"]).states()
    assert states["round_02/score"] == "not in recipe" and states["round_01/train"] == "done"
    assert states["evaluate"] == "out of date"


def test_untagged_unmerged_export_card_names_the_real_system_prompt_and_files(header_model, stub_training, tmp_path):
    from humpback_lite import prompts

    out = tmp_path / "untagged"
    _loop(out, "tags=false", "rounds=1", "evaluate.enabled=false").run()
    card = (out / "export" / "README.md").read_text()
    assert prompts.UNTAGGED_SYSTEM in card and prompts.SEED_TAG not in card
    assert "model.gguf" not in card and not (out / "export" / "model.gguf").exists()


def test_the_export_names_no_credential_home_folder_or_absolute_path(header_model, stub_training, tmp_path,
                                                                    monkeypatch):
    # what `humpback push` uploads: the card embeds the recipe, the dataset carries provenance
    import pydoc_data.topics

    corpus = tmp_path / "private" / "notes.txt"
    corpus.parent.mkdir()
    corpus.write_text("\n\n".join(list(pydoc_data.topics.topics.values())[:40]))
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # the corpus given relative to where the command runs
    _loop(out, "rounds=1", "evaluate.enabled=false", "export.merged=false", "data.corpus=['private/notes.txt']",
          "engine.base_url=http://me:s3cret@gpu-box:8080/v1?token=abc", "ray.address=ray://u:pw@head:10001").run()
    exported = {f.name: f.read_text() for f in (out / "export").rglob("*")
                if f.is_file() and f.suffix in (".md", ".jsonl", ".json", "") and f.stat().st_size < 10**7}
    for name, text in exported.items():
        for secret in ("s3cret", "token=abc", "u:pw", str(tmp_path), str(Path.home()), str(header_model.parent)):
            assert secret not in text, (name, secret)
    assert "http://gpu-box:8080/v1" in exported["README.md"] and "notes.txt" in exported["README.md"]
    rows = [json.loads(x) for x in exported["dataset.jsonl"].splitlines()]
    assert {r["provenance"] for r in rows if r["source"] != "seed"} == {"notes.txt"}
    modelfile = exported["Modelfile"]
    assert modelfile.startswith("FROM ../") and header_model.name in modelfile  # relative: works from the folder
    # the run saved the corpus as an absolute path: from another folder it finds the same file, and
    # `status` (or `evaluate`) sees every stage done instead of a changed corpus
    assert str(corpus) in (out / "recipe.yaml").read_text()
    monkeypatch.chdir(corpus.parent)
    assert set(load_run(out).states().values()) == {"done"}


def test_a_folder_that_is_not_this_runs_is_refused_before_anything_is_written(tmp_path):
    from humpback_lite.store import DataError

    mine = tmp_path / "proj"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="is not empty and is not a run folder"):
        _loop(mine).run()
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "recipe.yaml").write_text("name: quickstart\n")
    with pytest.raises(DataError, match="holds the run of recipe 'quickstart', not 'tiny'"):
        _loop(other).run()
    assert (other / "recipe.yaml").read_text() == "name: quickstart\n"


def test_no_held_out_pairs_skips_evaluation_and_finishes(header_model, stub_training, tmp_path):
    out = tmp_path / "noheld"
    _loop(out, "data.heldout=0", "rounds=1").run()
    counts = json.loads((out / "manifest.json").read_text())["stages"]["evaluate"]["counts"]
    assert counts["heldout"] == 0 and "data.heldout=0" in counts["skipped"]
    assert (out / "export" / "README.md").exists() and (out / "report" / "index.html").exists()


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(fake_run, stub_training):
    from humpback_lite.store import RunBusy, RunLock

    with RunLock(fake_run), pytest.raises(RunBusy, match=f"process {os.getpid()}"):
        _loop(fake_run).run()
    _loop(fake_run).run()  # released: runs (a no-op) again


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    import signal
    import subprocess
    import sys

    from humpback_lite.store import RunBusy, RunLock

    code = (f"from humpback_lite.store import RunLock\nwith RunLock({str(tmp_path)!r}):\n"
            "    print('held', flush=True)\n    import time; time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"  # the child holds the lock (not died at import)
        with pytest.raises(RunBusy, match=f"process {proc.pid}"):
            with RunLock(tmp_path):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with RunLock(tmp_path):  # the kernel released it with the process
        pass


def test_report_page_shows_every_section_and_escapes_corpus_text(fake_run, tmp_path):
    from humpback_lite.report import gather, render

    g = gather(fake_run)
    assert g["curation"] and g["evaluation"] and g["train"]["M1"][1] > 0  # typed train counts read back
    page = render(g)
    for heading in ("Did it help?", "The loop", "The data", "Examples, round 1", "Timings", "Recipe"):
        assert f">{heading}</h" in page, heading
    # Text from the corpus is data, never markup.
    g["curation"][0]["examples"]["best"][0]["instruction"] = "<script>alert(1)</script>"
    assert "<script>" not in render(g) and "&lt;script&gt;alert(1)" in render(g)


def test_report_examples_say_kept_only_for_pairs_selection_kept():
    from humpback_lite.report import _examples

    scored = [{"id": i, "score": s} for i, s in (("a", 0.9), ("b", 0.8), ("c", 0.5), ("d", 0.1))]
    ex = _examples(scored, kept_ids={"b", "c"})  # "a" scored best but was dropped (a near duplicate)
    assert [(p["id"], p["kept"]) for p in ex["best"]] == [("a", False), ("b", True)]
    assert [(p["id"], p["kept"]) for p in ex["borderline"]] == [("c", True), ("d", False)]


def test_a_run_killed_while_writing_its_manifest_leaves_no_temp_after_the_rerun(fake_run, stub_training, tmp_path):
    out = _copy(fake_run, tmp_path)
    (out / ".manifest.json.ab12cd34.tmp").write_text("{half")  # killed between write and rename
    _loop(out).run()
    assert not [p for p in out.rglob(".*") if p.is_file() and p.name != ".lock"]


def test_ifeval_is_a_stage_of_its_own_kept_apart_from_held_out_evaluation(fake_run, tmp_path, ifeval_checkers):
    from humpback_lite.report import gather, render

    out = _copy(fake_run, tmp_path)
    assert set(_rerun(out, "evaluate.ifeval=4")) == {"ifeval", "export"}  # held-out answers and judgments kept
    assert set(_rerun(out, "evaluate.ifeval=5", "evaluate.judge=base")) == {"evaluate", "ifeval", "export"}
    assert _rerun(out, "evaluate.ifeval=5", "evaluate.judge=base") == []
    card = (out / "export" / "README.md").read_text()
    assert "IFEval (Zhou et al. 2023), a seeded subset of 5" in card and "judge: `base model`" in card
    # without held-out pairs IFEval still runs, and the report shows it alone
    _rerun(out, "evaluate.ifeval=5", "data.heldout=0")
    states = load_run(out).states()  # the recipe the run saved
    assert states["evaluate"] == states["ifeval"] == "done"
    g = gather(out)
    assert "models" not in g["evaluation"] and g["evaluation"]["ifeval"]["prompts"] == 5
    page = render(g)
    assert "Instruction following (IFEval)" in page and "No evaluation in this run" not in page
    # a recipe that drops IFEval leaves the old folder out of the card and the report
    _rerun(out, "evaluate.ifeval=0", "data.heldout=0")
    assert "IFEval" not in (out / "export" / "README.md").read_text() and gather(out)["evaluation"] is None
