"""Does the engine give the same answers on another device or setting? Runs each side in its own
process (a crash is reported, not fatal) and compares with the CPU reference.

    python benchmarks/engine_check.py --gguf MODEL.gguf --gpu-layers -1 [--adapter A.gguf]

Compared: greedy generation (same text), the rubric digit distribution (max abs difference of the
five probabilities), token log-probabilities of an answer (max abs difference, nats), and the
next-token logits' argmax. Tolerances are printed with each figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "<|im_start|>user\nWhat does a compiler do?<|im_end|>\n<|im_start|>assistant\n"
ANSWER = "A compiler translates source code written in a programming language into machine code."


def side(gguf: str, adapter: str | None, gpu_layers: int, extra: str) -> dict:
    from humpback_lite import prompts
    from humpback_lite.engine import Engine

    t = time.perf_counter()
    e = Engine(gguf, adapter=adapter, n_ctx=2048, n_gpu_layers=gpu_layers, extra_buffers=extra)
    load = time.perf_counter() - t
    t = time.perf_counter()
    text = e.generate(PROMPT, max_tokens=32, temperature=0.0)
    gen = time.perf_counter() - t
    rubric = e.format(prompts.rubric_messages("What does a compiler do?", ANSWER), assistant_prefix=e.score_prefix)
    digits = e.digit_score(rubric).probs
    lp = e.token_logprobs(e.tokenize(PROMPT), e.tokenize(ANSWER)).tolist()
    logits = e.next_token_logits(e.tokenize(PROMPT))
    first, second = np.sort(logits)[-2:][::-1]
    return {"text": text, "digits": digits, "logprobs": lp, "top": int(np.argmax(logits)),
            "margin": float(first - second), "load_s": load, "gen_s": gen}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--gpu-layers", type=int, default=-1)
    ap.add_argument("--extra-buffers", default="auto")
    ap.add_argument("--side", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        print(json.dumps(side(a.gguf, a.adapter, int(a.side[0]), a.side[1])))
        return
    got = []
    # reference: CPU with the default setting; checked: the asked-for layers and setting
    for layers, extra in ((0, "auto"), (a.gpu_layers, a.extra_buffers)):
        cmd = [sys.executable, __file__, "--gguf", a.gguf, "--side", str(layers), extra]
        if a.adapter:
            cmd += ["--adapter", a.adapter]
        p = subprocess.run(cmd, capture_output=True, text=True)
        label = f"n_gpu_layers={layers} extra_buffers={extra}"
        if p.returncode != 0:
            print(f"{label}: exit {p.returncode}\n{p.stderr[-3000:]}", flush=True)
            continue
        got.append(json.loads(p.stdout.strip().splitlines()[-1]))
        r = got[-1]
        print(f"{label}: load {r['load_s']:.2f} s, 32 greedy tokens {r['gen_s']:.2f} s", flush=True)
    if len(got) < 2:
        sys.exit(1)
    cpu, dev = got
    d_digits = float(np.max(np.abs(np.subtract(cpu["digits"], dev["digits"]))))
    d_lp = float(np.max(np.abs(np.subtract(cpu["logprobs"], dev["logprobs"]))))
    print(f"greedy text identical: {cpu['text'] == dev['text']}")
    print(f"digit probabilities max |diff|: {d_digits:.4f} (tolerance 0.05)")
    print(f"answer log-probs max |diff|: {d_lp:.4f} nats (tolerance 0.1)")
    # A near tie (random weights give nearly flat logits) may fall either way with float rounding.
    tie = cpu["margin"] < 0.05
    print(f"next-token argmax equal: {cpu['top'] == dev['top']} (CPU's top-two margin {cpu['margin']:.4f}"
          f"{', a near tie: not compared' if tie else ''})")
    ok = d_digits <= 0.05 and d_lp <= 0.1 and (cpu["top"] == dev["top"] or tie)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
