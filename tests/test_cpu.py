"""Intel CPUs with AMX: quantized GGUFs crashed llama.cpp inside its AMX matmul when its extra
buffer types were on (llama.cpp#20824). `engine.extra_buffers=auto` turns them off there.

The end-to-end test runs on every CPU; on one with AMX it is the test that crashed before the fix
(a segmentation fault of the child process), elsewhere it checks that nothing broke."""

from __future__ import annotations

import subprocess
import sys

import pytest

from humpback_lite import engine as engine_mod
from humpback_lite.engine import AMX_FLAGS, Engine, cpu_flags, use_extra_buffers
from humpback_lite.runtime import runtime_gguf

HAS_AMX = bool(AMX_FLAGS & cpu_flags())


def test_auto_turns_extra_buffers_off_exactly_on_amx_cpus(monkeypatch):
    monkeypatch.setattr(engine_mod, "cpu_flags", lambda: {"avx512f", "amx_tile", "amx_int8"})
    assert use_extra_buffers("auto") is False
    monkeypatch.setattr(engine_mod, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert use_extra_buffers("auto") is True
    assert use_extra_buffers("off") is False and use_extra_buffers("on") is True


def test_the_setting_reaches_llama_cpp_model_params(model_gguf):
    for setting, expected in (("off", False), ("on", True)):
        e = Engine(model_gguf, n_ctx=256, extra_buffers=setting)
        assert e.llm.model_params.use_extra_bufts is expected and e.extra_buffers is expected
        e.close()


@pytest.mark.parametrize("kind", ["original", "q8_0"])
def test_quantized_gguf_evaluates_in_a_fresh_process_with_the_default_setting(model_gguf, kind, capsys):
    path = runtime_gguf(model_gguf, kind)
    code = (
        "from humpback_lite.engine import Engine\n"
        f"e = Engine({str(path)!r}, n_ctx=256)\n"
        "print(e.generate('The capital of France is', max_tokens=4, temperature=0.0))\n"
        "print('extra_buffers', e.extra_buffers)\n"
    )
    with capsys.disabled():
        print(f"\n[{kind}] CPU AMX flags: {sorted(AMX_FLAGS & cpu_flags()) or 'none'}")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr[-2000:]}"
    assert f"extra_buffers {not HAS_AMX}" in p.stdout
