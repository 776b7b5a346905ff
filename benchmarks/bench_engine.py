"""Generation throughput side by side in one process: our batched llama.cpp engine vs plain
transformers `generate` (in its fastest dtype here, at its best batch size on this machine) and vs our one-sequence path.

    python benchmarks/bench_engine.py [--pairs 32] [--repeats 3] [--parallel 16] [--model M] [--gpu-layers -1]

Loads (the embedded SmolLM2-135M or `--model`, a card or a .gguf, in the runtime type the recipes use,
BF16; with `--gpu-layers`, llama.cpp offloads that many layers and transformers runs on the GPU):
- augment: the backward prompt over real pydoc segments (~390 tokens), up to 48 sampled tokens
  (temperature 0.7, top-p 0.9): what the augment stage does for every segment;
- answer: a held-out seed instruction (~60 tokens), up to 160 greedy tokens: what evaluation does.
Each line: `name: ours X/s, baseline Y/s, ratio Z` (medians over repeats; pairs or answers per second).
"""

from __future__ import annotations

import argparse
import statistics
import time

from humpback_lite import prompts
from humpback_lite.corpus import segment
from humpback_lite.engine import Engine
from humpback_lite.hardware import train_dtype
from humpback_lite.models import fetch, get_card
from humpback_lite.runtime import runtime_gguf
from humpback_lite.seed import load_seed
from humpback_lite.train import prepare_weights


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--hf-batches", default="8,16,32", help="transformers batch sizes tried; the best is used")
    ap.add_argument("--model", default="smollm2-135m", help="a model card or a .gguf path")
    ap.add_argument("--gpu-layers", type=int, default=0, help="llama.cpp layers on the GPU (-1: all)")
    args = ap.parse_args()

    card = get_card(args.model)
    gguf = runtime_gguf(fetch(card), "bf16")
    segs = [r["text"] for r in segment(["pydoc:topics"], 600, 1500, max_segments=args.pairs)[0]]
    _, held = load_seed("builtin:seed", 30)
    batched = Engine(gguf, n_ctx=2048, parallel=args.parallel, n_gpu_layers=args.gpu_layers)
    single = Engine(gguf, n_ctx=2048, parallel=1, n_gpu_layers=args.gpu_layers)
    loads = {
        "augment": ([batched.format(prompts.backward_messages(s)) for s in segs],
                    {"max_tokens": 48, "temperature": 0.7, "top_p": 0.9}),
        "answer": ([batched.format(prompts.forward_messages(p["instruction"], "seed", True)) for p in held][: args.pairs],
                   {"max_tokens": 160, "temperature": 0.0}),
    }

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(prepare_weights(card, fetch(card)), padding_side="left")
    if tok.pad_token is None:  # a tokenizer rebuilt from a GGUF without a pad token (e.g. the GPU check's)
        tok.pad_token = tok.eos_token
    # the baseline in its fastest dtype here: bf16 where the hardware has it, else float32 (bf16 is
    # emulated ~40x slower on CPUs without AVX-512 BF16 / AMX)
    hf_dtype = train_dtype()
    model = AutoModelForCausalLM.from_pretrained(prepare_weights(card, fetch(card)),
                                                 dtype=getattr(torch, hf_dtype)).eval()
    device = "cuda" if args.gpu_layers and torch.cuda.is_available() else "cpu"
    model.to(device)

    def hf(texts: list[str], kw: dict, batch: int) -> None:
        sampling = ({"do_sample": True, "temperature": kw["temperature"], "top_p": kw["top_p"]}
                    if kw["temperature"] > 0 else {"do_sample": False})
        for i in range(0, len(texts), batch):
            enc = tok(texts[i: i + batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                model.generate(**enc, max_new_tokens=kw["max_tokens"], pad_token_id=tok.pad_token_id, **sampling)

    def measure(name: str, texts: list[str], kw: dict) -> None:
        n, seeds = len(texts), list(range(len(texts)))
        t_ours = timed(lambda: batched.generate_many(texts, seeds=seeds, **kw), args.repeats)
        t_one = timed(lambda: [single.generate(t, seed=s, **kw) for t, s in zip(texts, seeds, strict=True)],
                      args.repeats)
        # the baseline at its best batch size here (one run each to choose, then the median)
        best = min((int(b) for b in args.hf_batches.split(",")), key=lambda b: timed(lambda: hf(texts, kw, b), 1))
        t_hf = timed(lambda: hf(texts, kw, best), args.repeats)
        print(f"{name}: ours {n / t_ours:.2f}/s, transformers {hf_dtype} ({device}) batch {best} {n / t_hf:.2f}/s, "
              f"ratio {t_hf / t_ours:.2f}", flush=True)
        print(f"{name}: ours {n / t_ours:.2f}/s, ours one sequence {n / t_one:.2f}/s, ratio {t_one / t_ours:.2f}",
              flush=True)

    for name, (texts, kw) in loads.items():
        measure(name, texts, kw)
    print(f"(parallel {args.parallel}; llama.cpp GPU layers {args.gpu_layers}; medians of {args.repeats} runs over {args.pairs} items; "
          f"torch threads {torch.get_num_threads()}, llama.cpp threads {batched.llm.n_threads})")


if __name__ == "__main__":
    main()
