"""The engine settings chosen for this machine and model, read from files without loading a model."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_lite.cli import main
from humpback_lite.engine import (
    MIN_ROWS,
    auto_parallel,
    check_cxx_runtime,
    cxx_runtimes,
    decode_spans,
    kv_bytes_per_token,
    physical_cores,
    shared_prefix,
)
from humpback_lite.recipe import EngineConfig


def test_kv_cache_size_per_token_comes_from_the_gguf_header(header_model):
    # SmolLM2-135M's shape: 30 blocks x 3 KV heads x 64 dims x (K and V) x 2 bytes (f16)
    assert kv_bytes_per_token(header_model) == 30 * 3 * 64 * 2 * 2


def test_auto_parallel_fills_the_kv_budget_and_stops_at_sixteen(header_model):
    assert auto_parallel(header_model, 2048) == 16  # 16 x 45 MiB fit 1 GiB
    assert auto_parallel(header_model, 8192) == 5  # 1 GiB // 180 MiB
    assert auto_parallel(header_model, 10**7) == 1  # never fewer than one sequence


def test_threads_default_to_the_physical_cores_this_process_may_use():
    n = physical_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))


@pytest.mark.slow  # needs the embedded model's file in the cache
def test_models_command_shows_what_the_engine_would_use_here(model_gguf):
    out = " ".join(CliRunner().invoke(main, ["models"], terminal_width=200).output.split())  # rich wraps lines
    assert f"threads {EngineConfig().n_threads or physical_cores()}" in out
    assert "parallel 16 (auto; KV cache 720 MiB)" in out and "runtime_type auto" in out


CXX_LIB = '#include <locale>\nextern "C" const void * {name}() {{ return &std::locale::classic(); }}\n'


def _cxx_lib(tmp: Path, name: str, static: bool) -> Path | None:
    src, out = tmp / f"{name}.cpp", tmp / f"lib{name}.so"
    src.write_text(CXX_LIB.format(name=name))
    cmd = ["g++", "-shared", "-fPIC", str(src), "-o", str(out)] + (["-static-libstdc++"] if static else [])
    try:
        ok = subprocess.run(cmd, capture_output=True).returncode == 0
    except FileNotFoundError:
        ok = False
    return out if ok else None


def test_libraries_with_their_own_static_cxx_runtime_are_told_apart(tmp_path):
    # The H200 host's compiler linked libstdc++ into libggml, libggml-base and libllama each, and
    # llama.cpp's tokenizer died of SIGSEGV in std::regex. Two such libraries here, and two that
    # share the system's libstdc++.so.6.
    libs = {n: _cxx_lib(tmp_path, n, static) for n, static in
            (("own1", True), ("own2", True), ("shared1", False), ("shared2", False))}
    if None in libs.values():
        pytest.skip("needs g++ with a static libstdc++ (libstdc++-dev)")
    assert len(cxx_runtimes([libs["shared1"], libs["shared2"]])) == 1
    copies = cxx_runtimes(list(libs.values()))
    assert len(copies) == 3  # two private copies and the shared one
    assert sorted(len(v) for v in copies.values()) == [1, 1, 2]
    assert cxx_runtimes([tmp_path / "missing.so"]) == {}


def test_the_installed_llama_cpp_uses_one_cxx_runtime():
    import llama_cpp

    libs = sorted({p.resolve() for p in (Path(llama_cpp.__file__).parent / "lib").glob("lib*.so*")})
    assert len(cxx_runtimes(libs)) == 1
    check_cxx_runtime()  # and the check that every Engine runs passes


def test_engines_built_from_a_recipe_get_its_flash_attention_setting(monkeypatch, tmp_path):
    from humpback_lite import engine

    got = {}
    monkeypatch.setattr(engine, "runtime_path", lambda gguf, cfg: gguf)
    monkeypatch.setattr(engine, "configured_parallel", lambda path, cfg: 1)
    monkeypatch.setattr(engine.Engine, "__init__", lambda self, path, **kw: got.update(kw))
    for setting, expected in (("on", True), ("off", False)):
        engine.Engine.from_config(tmp_path / "m.gguf", EngineConfig(flash_attn=setting))
        assert got["flash_attn"] is expected


@pytest.mark.parametrize("n_batch", [128, 200, 512])
def test_scoring_decodes_are_never_shorter_than_min_rows(n_batch):
    for end in range(1, 1300, 7):
        for start in (0, 1, end // 2, end - 63, end - 1, end):
            spans = decode_spans(max(0, start), end, n_batch)
            first = spans[0][0] if spans else end
            assert first <= max(0, start) and [a for a, _ in spans[1:]] == [b for _, b in spans[:-1]]
            assert (spans[-1][1] == end) if start < end else spans == []
            for a, b in spans:
                assert b - a <= n_batch
                assert b - a >= MIN_ROWS or (first == 0 and len(spans) == 1 and end < MIN_ROWS), (start, end, spans)


def test_a_prefix_left_by_a_short_pass_is_not_reused():
    long = list(range(100))
    assert shared_prefix(long, long[:80] + [7]) == 80
    assert shared_prefix(long, long, limit=99) == 99
    assert shared_prefix(long[:MIN_ROWS - 1], long) == 0  # decoded in one short decode: rounded otherwise
