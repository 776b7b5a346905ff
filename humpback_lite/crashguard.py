"""Crashes inside llama.cpp are never silent.

A segmentation fault or abort in C code kills the process before Python can say anything, and
llama-cpp-python silences llama.cpp's log while a model loads. So, once per process, llama.cpp's
log goes to a file of our own (`route_llama_log`, quoted by load errors), and:
- `faulthandler` writes the Python stack of every thread to the terminal (a copy of stderr taken
  before anything silences it);
- a small watcher process learns, through a pipe, which llama.cpp operation is in flight
  ("generate on model.bf16.gguf + adapter.gguf"). If the pipe closes while one is, the process died
  inside it (a crash, or a kill such as the out-of-memory killer): the watcher says so, with the
  last lines llama.cpp logged while silenced.

Why a process and not a signal handler: Python cannot run code in a SIGSEGV handler safely, and a
crash can leave the heap locked; a separate process needs nothing from the dying one.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

_WATCHER = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
log = int(sys.argv[1])  # the parent's log, an open descriptor of an unlinked file
op = hint = None
for line in sys.stdin:
    kind, _, what = line.rstrip("\n").partition(" ")
    op, _, hint = what.partition("\t") if kind == "B" else (None, "", None)
if op is not None:
    tail = ""
    try:
        text = os.pread(log, os.fstat(log).st_size, 0).decode(errors="replace")
        lines = [x for x in text.splitlines() if x.strip()][-12:]
        if lines:
            tail = "\nllama.cpp's last captured log lines:\n  " + "\n  ".join(lines)
    except OSError:
        pass
    sys.stderr.write(
        f"\nhumpback: the process died inside llama.cpp during {op}: a crash in llama.cpp, or the "
        f"process was killed (out of memory?).{tail}\n"
        + (hint + "\n" if hint else "") + "HUMPBACK_VERBOSE=1 shows llama.cpp's whole log.\n")
"""


class _Guard:
    def __init__(self) -> None:
        self.pid = os.getpid()
        # The log is a file without a name: unlinked at once, it lives while this process or the
        # watcher holds it open, so nothing is left in /tmp even when both are killed (SIGKILL on
        # the process group). O_APPEND: writes land at the end after each truncation.
        fd, path = tempfile.mkstemp(prefix="humpback-llama-", suffix=".log")
        self.log = os.open(path, os.O_RDWR | os.O_APPEND)
        os.close(fd)
        os.unlink(path)
        # A copy of the terminal's stderr, taken before any redirection silences fd 2.
        self.terminal = os.fdopen(os.dup(2), "w", buffering=1)
        if not faulthandler.is_enabled():
            faulthandler.enable(file=self.terminal, all_threads=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WATCHER, str(self.log)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=self.terminal, text=True, bufsize=1, pass_fds=(self.log,))
        atexit.register(self.close)

    def send(self, line: str) -> None:
        if os.getpid() != self.pid:  # a forked child must not speak for its parent
            return
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()


_guard: _Guard | None = None


def install() -> _Guard:
    """Start the guard (idempotent). Call it before anything redirects stderr."""
    global _guard
    if _guard is None or _guard.pid != os.getpid():
        _guard = _Guard()
    return _guard


_llama_log_callback = None  # referenced for the process's life: llama.cpp keeps calling it


def route_llama_log() -> None:
    """Send what llama.cpp logs through its callback to the guard's log (to fd 2 under
    HUMPBACK_VERBOSE), where `log_tail` and crash reports read it.

    llama-cpp-python prints those messages to `sys.stderr`, which it swaps for /dev/null while a
    model loads (verbose=False), so the reason a file fails to load ("tensor ... data is not within
    the file bounds") was lost: the error said only "Failed to load model from file"."""
    global _llama_log_callback
    if _llama_log_callback is not None:
        return
    import ctypes

    import llama_cpp

    install()
    verbose = bool(os.environ.get("HUMPBACK_VERBOSE"))
    debug, cont = 1, 5  # ggml.h's ggml_log_level (llama-cpp-python's comment has an older order)
    last = [0]

    @llama_cpp.llama_log_callback
    def write(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        level = last[0] if level == cont else level
        last[0] = level
        # ~2,000 debug lines per load (~220 KB) stay out of the file; a reason to quote is never one
        if verbose or level != debug:
            with contextlib.suppress(OSError):
                os.write(2 if verbose else _guard.log, text)  # the guard of this process (install)

    llama_cpp.llama_log_set(write, ctypes.c_void_p(0))
    _llama_log_callback = write


@contextlib.contextmanager
def operation(what: str, hint: str = "") -> Iterator[None]:
    """A call into llama.cpp: if the process dies inside it, the watcher names `what` and adds
    `hint` (what to try, where a known crash fits the case)."""
    guard = install()
    guard.send(f"B {what}" + (f"\t{hint}" if hint else ""))
    try:
        yield
    finally:
        guard.send("E")


@contextlib.contextmanager
def captured_stderr() -> Iterator[None]:
    """Send fd 2 (where llama.cpp logs from C) to the guard's log, emptied first; `log_tail`
    quotes it in error messages."""
    guard = install()
    sys.stderr.flush()
    saved = os.dup(2)
    os.ftruncate(guard.log, 0)
    try:
        os.dup2(guard.log, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def log_tail(n: int = 8) -> str:
    """The last non-empty lines llama.cpp logged while captured."""
    if _guard is None:
        return ""
    try:
        text = os.pread(_guard.log, os.fstat(_guard.log).st_size, 0).decode(errors="replace")
    except OSError:
        return ""
    return "\n".join([x for x in text.splitlines() if x.strip()][-n:])


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """llama.cpp logs to fd 2 from C; keep that log out of the terminal (in the guard's log file,
    which error messages and crash reports quote) unless HUMPBACK_VERBOSE is set."""
    if os.environ.get("HUMPBACK_VERBOSE"):
        yield
        return
    with captured_stderr():
        yield
