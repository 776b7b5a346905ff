"""Augment and score throughput: our llama.cpp engine vs plain transformers, side by side.

    python benchmarks/bench_engine.py [--pairs 8] [--repeats 3]

Augment-like load: the backward prompt over a real pydoc segment (~300 tokens) + 48 sampled tokens.
Score-like load: the rubric prompt + one next-token distribution (expected-score mode).
Baselines: transformers `generate` / forward on the same model in bf16, batched (batch 8), the
fastest plain setting measured on these CPUs. Prints medians over repeats and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

from humpback_lite import prompts
from humpback_lite.corpus import segment
from humpback_lite.engine import Engine
from humpback_lite.models import fetch, get_card, runtime_gguf
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
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    card = get_card("smollm2-135m")
    gguf = fetch(card)
    segs = [r["text"] for r in segment(["pydoc:topics"], 900, 1300, max_segments=args.pairs)[0]]
    engines = {"Q4_1 (shipped)": Engine(gguf, n_ctx=2048), "BF16 (runtime_type)": Engine(runtime_gguf(gguf, "bf16"), n_ctx=2048)}
    engine = engines["Q4_1 (shipped)"]
    aug_prompts = [engine.format(prompts.backward_messages(s)) for s in segs]
    score_prompts = [engine.format(prompts.rubric_messages("Explain this part of Python.", s),
                                   assistant_prefix=engine.score_prefix) for s in segs]

    def ours_augment(e):
        for i, p in enumerate(aug_prompts):
            e.generate(p, max_tokens=48, temperature=0.7, top_p=0.9, seed=i)

    def ours_score(e):
        for p in score_prompts:
            e.digit_score(p)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = prepare_weights(card, gguf)
    tok = AutoTokenizer.from_pretrained(weights, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.bfloat16).eval()

    def hf_batches(texts, fn, batch=8):
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                fn(enc)

    def hf_augment():
        hf_batches(aug_prompts, lambda enc: model.generate(
            **enc, max_new_tokens=48, min_new_tokens=48, do_sample=True, temperature=0.7, top_p=0.9,
            pad_token_id=tok.pad_token_id))

    def hf_score():
        hf_batches(score_prompts, lambda enc: model(**enc).logits[:, -1])

    n = len(segs)
    print(f"{'load':8} {'llama.cpp GGUF':20} {'ours pairs/s':>12} {'transformers bf16 b8 pairs/s':>29} {'ratio':>7}")
    for name, ours, theirs in (("augment", ours_augment, hf_augment), ("score", ours_score, hf_score)):
        t_hf = timed(theirs, args.repeats)
        for label, e in engines.items():
            t_ours = timed(lambda e=e, ours=ours: ours(e), args.repeats)
            print(f"{name:8} {label:20} {n / t_ours:12.2f} {n / t_hf:29.2f} {t_hf / t_ours:7.2f}x", flush=True)
    print(f"(medians of {args.repeats} runs over {n} pairs; torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
