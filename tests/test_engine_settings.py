"""The engine settings chosen for this machine and model, read from files without loading a model."""

from __future__ import annotations

import os

from click.testing import CliRunner

from humpback_lite.cli import main
from humpback_lite.engine import auto_parallel, kv_bytes_per_token, physical_cores
from humpback_lite.recipe import EngineConfig


def test_kv_cache_size_per_token_comes_from_the_gguf_header(model_gguf):
    # SmolLM2-135M: 30 blocks x 3 KV heads x 64 dims x (K and V) x 2 bytes (f16)
    assert kv_bytes_per_token(model_gguf) == 30 * 3 * 64 * 2 * 2


def test_auto_parallel_fills_the_kv_budget_and_stops_at_sixteen(model_gguf):
    assert auto_parallel(model_gguf, 2048) == 16  # 16 x 45 MiB fit 1 GiB
    assert auto_parallel(model_gguf, 8192) == 5  # 1 GiB // 180 MiB
    assert auto_parallel(model_gguf, 10**7) == 1  # never fewer than one sequence


def test_threads_default_to_the_physical_cores_this_process_may_use():
    n = physical_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_models_command_shows_what_the_engine_would_use_here(model_gguf):
    out = CliRunner().invoke(main, ["models"], terminal_width=200).output
    assert f"threads {EngineConfig().n_threads or physical_cores()}" in out
    assert "parallel 16 (auto; KV cache 720 MiB)" in out and "runtime_type bf16" in out
