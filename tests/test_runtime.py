"""engine.runtime_type: which GGUF llama.cpp runs, and `auto`, which measures it once per machine."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import write_gguf

from humpback_lite import runtime
from humpback_lite.cli import main
from humpback_lite.recipe import EngineConfig


def _tiny_gguf(path: Path, n: int = 4096) -> Path:
    import numpy as np

    return write_gguf(path, lambda w: w.add_tensor("token_embd.weight", np.zeros((n // 64, 64), dtype=np.float32)))


def _fake_speeds(monkeypatch, speeds: dict[str, tuple[float, float]]) -> list[str]:
    measured: list[str] = []
    monkeypatch.setattr(runtime, "runtime_gguf", lambda gguf, kind: Path(f"{gguf}.{kind}"))
    monkeypatch.setattr(runtime, "candidates", lambda gguf: (list(speeds), {}))

    def measure(path, cfg):
        kind = next((k for k in speeds if str(path).endswith(f".{k}")), "original")  # the file itself
        measured.append(kind)
        return {"prompt_tps": speeds[kind][0], "gen_tps": speeds[kind][1]}

    monkeypatch.setattr(runtime, "measure", measure)
    return measured


def test_auto_keeps_the_type_fastest_for_the_loops_mix_of_prompt_and_generation(hb_home, tmp_path, monkeypatch):
    gguf = _tiny_gguf(tmp_path / "m.gguf")
    # the AVX2-only EPYC's measured speeds: Q8_0 reads prompts fastest, BF16 is emulated
    measured = _fake_speeds(monkeypatch, {"original": (160, 62), "q8_0": (323, 65), "bf16": (317, 42)})
    assert runtime.choose(gguf, EngineConfig())["chosen"] == "q8_0"
    assert measured == ["original", "q8_0", "bf16"] * runtime.ROUNDS  # in turn, round after round
    # generation alone would prefer another type, but the loop reads ~40 prompt tokens per generated one
    gguf2 = _tiny_gguf(tmp_path / "m2.gguf")
    _fake_speeds(monkeypatch, {"original": (100, 200), "bf16": (800, 100)})
    assert runtime.choose(gguf2, EngineConfig())["chosen"] == "bf16"


def test_a_slow_spell_during_one_types_probe_does_not_decide(hb_home, tmp_path, monkeypatch):
    # a VM's steal time during BF16's first probe (measured: 600 prompt tokens/s in the spell,
    # 967-1094 outside it, F16 655-683): the rounds keep each type's best
    gguf = _tiny_gguf(tmp_path / "m.gguf")
    _fake_speeds(monkeypatch, {"original": (350, 150), "f16": (670, 100), "bf16": (1050, 100)})
    fake = runtime.measure
    spells = iter([True])

    def measure(path, cfg):
        got = fake(path, cfg)
        if str(path).endswith(".bf16") and next(spells, False):
            return {"prompt_tps": 600.0, "gen_tps": 94.0}
        return got

    monkeypatch.setattr(runtime, "measure", measure)
    result = runtime.choose(gguf, EngineConfig())
    assert result["chosen"] == "bf16" and result["speeds"]["bf16"] == {"prompt_tps": 1050, "gen_tps": 100}


def test_auto_measures_once_per_model_and_machine_and_says_so(hb_home, tmp_path, monkeypatch):
    gguf = _tiny_gguf(tmp_path / "m.gguf")
    measured = _fake_speeds(monkeypatch, {"original": (100, 50), "q8_0": (300, 40)})
    cfg = EngineConfig()
    once = 2 * runtime.ROUNDS  # two types, every round
    assert runtime.describe(gguf, cfg).startswith("auto (not measured")
    first = runtime.choose(gguf, cfg)
    assert runtime.choose(gguf, cfg) == first and len(measured) == once  # the second call reads the cache
    assert runtime.runtime_path(gguf, cfg) == Path(f"{gguf}.q8_0")
    assert runtime.describe(gguf, cfg).startswith("auto -> q8_0 (measured prompt/generation tokens/s: original 100/50")
    # other engine settings that change speed (threads) are another machine: measured again
    runtime.choose(gguf, replace(cfg, n_threads=7))
    assert len(measured) == 2 * once
    # so is the same llama.cpp version built with other instruction sets (a build without AVX-512)
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: b"CPU : AVX2 = 1 | FMA = 1 | ")
    runtime.choose(gguf, cfg)
    assert len(measured) == 3 * once
    # an explicit type is used as it is, without measuring
    monkeypatch.undo()
    assert runtime.runtime_path(gguf, replace(cfg, runtime_type="original")) == gguf and len(measured) == 3 * once


def test_a_copy_bigger_than_half_the_memory_is_not_made(hb_home, tmp_path, monkeypatch):
    gguf = _tiny_gguf(tmp_path / "m.gguf", n=1 << 16)  # 65,536 weights: a BF16 copy is 128 KiB
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_PHYS_PAGES" else real(name))
    page = real("SC_PAGE_SIZE")
    if 2 * (1 << 16) <= page / 2:
        pytest.skip("page size too large for this check")
    kinds, skipped = runtime.candidates(gguf)
    assert kinds == ["original"] and set(skipped) == {"f16", "bf16"}
    assert "half of" in skipped["bf16"]


def test_copies_live_in_the_cache_and_follow_the_file_they_come_from(hb_home, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    gguf = _tiny_gguf(folder / "m.gguf")
    first = runtime.copy_path(gguf, "bf16")
    assert first.is_relative_to(runtime.cache_dir()) and folder not in first.parents  # never beside the user's file
    same_name_elsewhere = _tiny_gguf(tmp_path / "m.gguf")
    assert runtime.copy_path(same_name_elsewhere, "bf16") != first
    _tiny_gguf(gguf, n=8192)  # replaced in place
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))
    assert runtime.copy_path(gguf, "bf16") != first


@pytest.mark.slow
def test_auto_on_the_real_model_measures_converts_and_humpback_models_prints_it(model_gguf):
    cfg = EngineConfig()
    got = runtime.choose(model_gguf, cfg)
    assert set(got["speeds"]) == {"original", "f16", "bf16"}
    assert all(v["prompt_tps"] > 0 and v["gen_tps"] > 0 for v in got["speeds"].values())
    chosen = runtime.runtime_path(model_gguf, cfg)
    assert chosen.exists() and (got["chosen"] == "original") == (chosen == model_gguf)
    out = " ".join(CliRunner().invoke(main, ["models"], terminal_width=300).output.split())  # rich wraps lines
    assert f"runtime_type auto -> {got['chosen']} (measured" in out and "flash_attn on" in out


def test_engines_carry_the_type_auto_chose_so_ray_workers_run_the_same_file(hb_home, tmp_path, monkeypatch):
    from humpback_lite.engines import factory

    gguf = _tiny_gguf(tmp_path / "m.gguf")
    _fake_speeds(monkeypatch, {"original": (100, 50), "q8_0": (300, 40)})
    engines = factory(gguf, EngineConfig())
    # shipped to a worker, `engines.cfg` needs no measurement there (other threads, other cache)
    assert engines.cfg.runtime_type == "q8_0"
    assert factory(gguf, EngineConfig(runtime_type="bf16")).cfg.runtime_type == "bf16"


def test_a_run_keeps_the_type_auto_chose_when_it_began(hb_home, tmp_path, monkeypatch):
    from conftest import TINY

    from humpback_lite.loop import Loop
    from humpback_lite.recipe import load_recipe

    gguf = _tiny_gguf(tmp_path / "m.gguf")
    _fake_speeds(monkeypatch, {"original": (100, 50), "q8_0": (300, 40)})
    recipe = load_recipe(TINY, ["engine.executor=ray", "ray.workers=2"])
    loop = Loop(recipe, tmp_path / "run")
    loop.gguf = gguf
    assert loop.engines.cfg.runtime_type == "q8_0"
    assert loop.engines.cfg.n_threads == recipe.ray.cpus_per_worker  # chosen with this process's threads first
    # the machine measures otherwise later (a new llama.cpp, another CPU): the run goes on as it began
    runtime.measurement_path(gguf, recipe.engine).unlink()
    measured = _fake_speeds(monkeypatch, {"original": (900, 90), "q8_0": (300, 40)})
    resumed = Loop(load_recipe(TINY, []), tmp_path / "run")
    resumed.gguf = gguf
    assert resumed.engines.cfg.runtime_type == "q8_0" and measured == []
