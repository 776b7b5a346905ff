"""Which difference between a plain `llama_cpp.Llama(path)` and our `Engine(path)` makes a load crash?

    python benchmarks/load_bisect.py MODEL.gguf [--gpu-layers -1]

Seen on an Intel Xeon (AMX) host with an H200, llama-cpp-python 0.3.36 built there (CPU-only and
CUDA builds alike): `Engine(path)` died of SIGSEGV inside `llama_model_load_from_file`, right after
"init_tokenizer: initializing tokenizer for type 2", for every tensor type and extra-buffer setting,
while a plain `Llama(path, n_gpu_layers=-1, verbose=False)` in another process loaded the same file
and generated. Each variant below adds one of the Engine's differences, in its own process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LOAD = "import llama_cpp; llama_cpp.Llama({path!r}, n_gpu_layers={layers}, verbose=False, {extra})"
VARIANTS = {
    "plain Llama": (LOAD, ""),
    "numpy imported first": ("import numpy; " + LOAD, ""),
    "yaml + numpy imported first": ("import yaml, numpy; " + LOAD, ""),
    "n_threads=cpu_count, n_ctx=2048": (LOAD, "n_threads=__import__('os').cpu_count(), n_ctx=2048"),
    "faulthandler enabled": ("import faulthandler; faulthandler.enable(); " + LOAD, ""),
    "humpback_lite imported": ("import humpback_lite.engine; " + LOAD, ""),
    "crashguard installed": ("from humpback_lite import crashguard; crashguard.install(); " + LOAD, ""),
    "model params patched (extra on)": (
        "from humpback_lite.engine import _default_params\nwith _default_params({'use_extra_bufts': True}, {}): " + LOAD, ""),
    "stderr captured": ("from humpback_lite.models import quiet_stderr\nwith quiet_stderr(): " + LOAD, ""),
    "Engine": ("from humpback_lite.engine import Engine; Engine({path!r}, n_gpu_layers={layers})", ""),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--gpu-layers", type=int, default=0)
    a = ap.parse_args()
    for name, (code, extra) in VARIANTS.items():
        src = code.format(path=a.gguf, layers=a.gpu_layers, extra=extra)
        p = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, cwd=ROOT, timeout=120)
        verdict = "ok" if p.returncode == 0 else f"exit {p.returncode}"
        print(f"{name:34} {verdict}", flush=True)


if __name__ == "__main__":
    main()
