"""Which difference between a plain `llama_cpp.Llama(path)` and our `Engine(path)` makes a load crash?

    python benchmarks/load_bisect.py MODEL.gguf [--gpu-layers -1] [--backtrace]

Seen on an Intel Xeon (AMX) host with an H200, llama-cpp-python 0.3.36 built there (CPU-only and
CUDA builds alike): `Engine(path)` died of SIGSEGV inside `llama_model_load_from_file`, right after
"init_tokenizer: initializing tokenizer for type 2", for every tensor type and extra-buffer setting,
while a plain `Llama(path, n_gpu_layers=-1, verbose=False)` in another process loaded the same file
and generated.

A ladder: each rung adds one of the Engine's differences to the rung before, in a fresh process that
loads the model and evaluates a few tokens, so the first rung that dies names the difference. The
last rung is `Engine` itself. With `--backtrace`, the first rung that dies runs again under a
debugger (gdb, or cuda-gdb where only that is installed) and its native stack is printed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each rung: (name, setup lines, Llama keyword arguments added). Cumulative.
RUNGS = [
    ("plain Llama", [], ""),
    ("+ n_ctx=2048", [], "n_ctx=2048"),
    ("+ n_threads=physical_cores()", ["from humpback_lite.engine import physical_cores"],
     "n_threads=physical_cores()"),
    ("+ n_batch=512, seed=0, lora_path=None", [], "n_batch=512, seed=0, lora_path=None"),
    ("+ params patched (extra auto, n_seq_max)",
     ["from humpback_lite.engine import _default_params, use_extra_buffers",
      "ctx = _default_params({'use_extra_bufts': use_extra_buffers('auto')}, {'n_seq_max': 1})"], ""),
    ("+ crashguard installed", ["from humpback_lite import crashguard", "crashguard.install()"], ""),
    ("+ stderr captured", ["from humpback_lite.crashguard import quiet_stderr", "quiet = quiet_stderr()"], ""),
]
EVAL = "llm.eval(llm.tokenize(b'The capital of France is', add_bos=False))\nprint('ok', flush=True)\n"


def program(rung: int, path: str, layers: int) -> str:
    """Source of the process for rungs[0..rung] (the Engine rung is the last, len(RUNGS))."""
    if rung == len(RUNGS):
        return (f"from humpback_lite.engine import Engine\ne = Engine({path!r}, n_gpu_layers={layers})\n"
                "llm = e.llm\n" + EVAL)
    lines, kwargs = ["import contextlib", "import llama_cpp", "ctx = contextlib.nullcontext()",
                     "quiet = contextlib.nullcontext()"], [f"n_gpu_layers={layers}", "verbose=False"]
    for _, setup, kw in RUNGS[: rung + 1]:
        lines += setup
        kwargs += [kw] if kw else []
    lines.append(f"with quiet, ctx:\n    llm = llama_cpp.Llama({path!r}, {', '.join(kwargs)})")
    return "\n".join(lines) + "\n" + EVAL


def debugger() -> str | None:
    return shutil.which("gdb") or shutil.which("cuda-gdb")


def backtrace(src: str) -> str:
    dbg = debugger()
    if dbg is None:
        return "(no gdb or cuda-gdb on this machine)"
    cmd = [dbg, "-q", "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 40",
           "-ex", "info sharedlibrary", "--args", sys.executable, "-c", src]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=180)
    except subprocess.TimeoutExpired:
        return "(debugger timed out)"
    lines = (p.stdout + p.stderr).splitlines()
    # the stack, the signal line and the library list are what matter; skip thread start chatter
    keep = [x for x in lines if not x.startswith(("[New Thread", "[Thread ", "[Detaching", "[Inferior"))]
    return "\n".join(keep[-120:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--backtrace", action="store_true", help="run the first rung that dies under a debugger")
    a = ap.parse_args()
    first_dead = None
    for i, name in enumerate([r[0] for r in RUNGS] + ["Engine"]):
        src = program(i, a.gguf, a.gpu_layers)
        try:
            p = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, cwd=ROOT, timeout=120)
            ok = p.returncode == 0 and "ok" in p.stdout
            verdict = "ok" if ok else f"exit {p.returncode}"
        except subprocess.TimeoutExpired:
            ok, verdict, p = False, "timed out (120 s)", None
        print(f"{name:44} {verdict}", flush=True)
        if not ok and first_dead is None:
            first_dead = (name, src)
            if p is not None:
                print("  stderr: " + "\n  ".join(p.stderr.strip().splitlines()[-15:]), flush=True)
    if first_dead is None:
        print("every rung loaded and evaluated")
        return
    print(f"first rung that dies: {first_dead[0]}")
    if a.backtrace:
        print(f"native stack of '{first_dead[0]}' under {debugger()}:\n{backtrace(first_dead[1])}", flush=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
