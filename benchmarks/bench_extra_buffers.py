"""llama.cpp's extra CPU buffer types (AMX tiles, repacked weights): on vs off, per tensor type.

    python benchmarks/bench_extra_buffers.py [--gguf MODEL.gguf] [--repeats 5] [--threads N]

For each tensor type (the file as given, Q8_0, Q4_0, BF16; copies converted once, cached) and each
setting, a fresh process loads the model through `Engine` and measures prompt evaluation (a
512-token prompt, tokens/s) and generation (64 single-token decodes, tokens/s); medians over
repeats. A process that dies (the AMX crash) is reported as such instead of ending the benchmark.
The last column is the speed with extra buffers on divided by off (above 1: on is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TYPES = ["original", "q8_0", "q4_0", "bf16"]


def measure(gguf: str, setting: str, repeats: int, threads: int | None, gpu_layers: int) -> dict:
    from humpback_lite.engine import Engine

    e = Engine(gguf, n_ctx=1024, n_threads=threads, n_gpu_layers=gpu_layers, extra_buffers=setting)
    llm = e.llm
    prompt = [(i * 7919) % 30000 + 100 for i in range(512)]
    pp, tg = [], []
    for _ in range(repeats):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        pp.append(len(prompt) / (time.perf_counter() - t))
        t = time.perf_counter()
        for i in range(64):
            llm.eval([prompt[i]])
        tg.append(64 / (time.perf_counter() - t))
    return {"pp": statistics.median(pp), "tg": statistics.median(tg), "extra_buffers": e.extra_buffers}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="Model file (default: the embedded SmolLM2-135M, Q4_1).")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--one", nargs=2, metavar=("GGUF", "SETTING"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one[0], a.one[1], a.repeats, a.threads, a.gpu_layers)))
        return

    from humpback_lite.engine import AMX_FLAGS, cpu_flags, use_extra_buffers
    from humpback_lite.hardware import cpu_name
    from humpback_lite.models import fetch, get_card
    from humpback_lite.runtime import runtime_gguf

    base = Path(a.gguf) if a.gguf else fetch(get_card("smollm2-135m"))
    print(f"CPU: {cpu_name()}; AMX flags: {sorted(AMX_FLAGS & cpu_flags()) or 'none'}; "
          f"auto -> extra buffers {'on' if use_extra_buffers('auto') else 'off'}")
    print(f"{'type':10} {'setting':8} {'prompt tok/s':>13} {'gen tok/s':>10}")
    for kind in a.types.split(","):
        path = runtime_gguf(base, kind)
        got = {}
        for setting in ("on", "off"):
            cmd = [sys.executable, __file__, "--one", str(path), setting, "--repeats", str(a.repeats),
                   "--gpu-layers", str(a.gpu_layers)] + (["--threads", str(a.threads)] if a.threads else [])
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                why = f"died (exit {p.returncode})" if p.returncode < 0 or p.returncode > 128 else f"failed ({p.returncode})"
                print(f"{kind:10} {setting:8} {why}: {p.stderr.strip().splitlines()[-1:] }", flush=True)
                continue
            got[setting] = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"{kind:10} {setting:8} {got[setting]['pp']:13.0f} {got[setting]['tg']:10.1f}", flush=True)
        if len(got) == 2:
            print(f"{kind:10} {'on/off':8} {got['on']['pp'] / got['off']['pp']:12.2f}x "
                  f"{got['on']['tg'] / got['off']['tg']:9.2f}x", flush=True)
    print(f"(medians of {a.repeats} repeats; 512-token prompt; 64 single-token decodes)")


if __name__ == "__main__":
    main()
