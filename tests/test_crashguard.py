"""A crash inside llama.cpp is reported with the model and operation, never silently."""

import os
import subprocess
import sys

CRASH = """
import os, signal
from humpback_lite import crashguard
with crashguard.captured_stderr():
    os.write(2, b"llama_model_load: error loading model tensors\\n")
with crashguard.operation("generate on model.bf16.gguf + adapter.gguf"):
    {body}
"""


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CRASH.format(body=body)], capture_output=True, text=True, timeout=60)


def test_a_segfault_inside_an_operation_names_model_operation_and_llama_log():
    p = _run("os.kill(os.getpid(), signal.SIGSEGV)")
    assert p.returncode == -11
    assert "Fatal Python error: Segmentation fault" in p.stderr  # faulthandler, on the real stderr
    assert "died inside llama.cpp during generate on model.bf16.gguf + adapter.gguf" in p.stderr
    assert "llama_model_load: error loading model tensors" in p.stderr  # the silenced log, quoted


def test_a_clean_exit_or_a_python_error_says_nothing_about_llama_cpp():
    ok = _run("pass")
    assert ok.returncode == 0 and "llama.cpp" not in ok.stderr
    err = _run("raise KeyError('x')")
    assert err.returncode == 1 and "KeyError" in err.stderr and "died inside" not in err.stderr


def test_a_hint_is_given_only_with_the_operation_it_fits():
    hinted = subprocess.run([sys.executable, "-c", CRASH.replace(
        'crashguard.operation("generate on model.bf16.gguf + adapter.gguf")',
        'crashguard.operation("decode on m.gguf", "engine.extra_buffers=off avoids it.")').format(
        body="os.kill(os.getpid(), signal.SIGSEGV)")], capture_output=True, text=True, timeout=60)
    assert "died inside llama.cpp during decode on m.gguf" in hinted.stderr
    assert "engine.extra_buffers=off avoids it." in hinted.stderr
    plain = _run("os.kill(os.getpid(), signal.SIGSEGV)")
    assert "extra_buffers" not in plain.stderr  # no AMX advice for a crash it does not fit


def test_no_log_file_is_left_behind_even_when_the_whole_process_group_is_killed(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    for body in ("pass", "os.killpg(0, signal.SIGKILL)"):  # a clean exit; `timeout -s KILL`, the OOM killer
        p = subprocess.run([sys.executable, "-c", CRASH.format(body=body)], capture_output=True, text=True,
                           timeout=60, env=env, start_new_session=True)
        assert p.returncode in (0, -9)
    assert list(tmp_path.iterdir()) == []
