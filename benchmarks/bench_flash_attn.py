"""llama.cpp's flash attention (`engine.flash_attn`) on the loop's real work, on and off side by
side in one run: the score stage's likelihood passes (M0 and backward adapters), augment's batched
generation (backward adapter) and evaluation-style greedy answers (M0, up to 256 tokens, as IFEval
asks), in the runtime type the recipe's `engine.runtime_type` gives on this machine.

    python benchmarks/bench_flash_attn.py RUN [--pairs 16] [--repeats 3]

RUN: a finished run folder (its augment/pairs.jsonl, seed/heldout.jsonl, M0 and backward adapters).
Prints seconds (median of repeats, on and off alternating) and off/on, and how far the two move the
per-token log-probs of the scored answers. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from humpback_lite import prompts
from humpback_lite.engine import Engine
from humpback_lite.models import fetch, get_card
from humpback_lite.recipe import load_recipe
from humpback_lite.runtime import runtime_path
from humpback_lite.signals import Scorer
from humpback_lite.store import read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    run = Path(args.run)
    recipe = load_recipe(run / "recipe.yaml")
    path = runtime_path(fetch(get_card(recipe.model)), recipe.engine)
    m0, back = run / "round_00" / "train" / "adapter.gguf", run / "backward" / "adapter.gguf"
    pairs = [(p["instruction"], p["output"]) for p in read_jsonl(run / "augment" / "pairs.jsonl")
             if p["instruction"].strip()][: args.pairs]
    heldout = [r["instruction"] for r in read_jsonl(run / "seed" / "heldout.jsonl")][: args.pairs]
    n_ctx = recipe.engine.n_ctx
    times: dict[bool, dict[str, list[float]]] = {fa: {"score": [], "augment": [], "answers": []} for fa in (False, True)}
    logprobs: dict[bool, np.ndarray] = {}
    print(f"{path.name}, {len(pairs)} pairs, {len(heldout)} held-out instructions, {args.repeats} repeats")
    for _ in range(args.repeats):
        for fa in (False, True):
            judge = Engine(path, adapter=m0, n_ctx=n_ctx, flash_attn=fa)
            backward = Engine(path, adapter=back, n_ctx=n_ctx, flash_attn=fa)
            t = time.perf_counter()
            Scorer(judge, backward, max_answer_tokens=recipe.curate.max_answer_tokens).likelihoods(
                pairs, ["pmi", "ifd", "backward"])
            times[fa]["score"].append(time.perf_counter() - t)
            context = judge.tokenize(judge.format(prompts.forward_messages(pairs[0][0])))
            logprobs[fa] = np.concatenate([judge.token_logprobs(context, judge.tokenize(a)[:400]) for _, a in pairs])
            judge.close()
            backward.close()
            gen = Engine(path, adapter=back, n_ctx=n_ctx, parallel=16, flash_attn=fa)
            texts = [gen.format(prompts.backward_messages(a[:1500])) for _, a in pairs]
            t = time.perf_counter()
            gen.generate_many(texts, max_tokens=recipe.augment.max_new_tokens, temperature=0.7, top_p=0.9)
            times[fa]["augment"].append(time.perf_counter() - t)
            gen.close()
            gen = Engine(path, adapter=m0, n_ctx=n_ctx, parallel=16, flash_attn=fa)
            texts = [gen.format(prompts.forward_messages(q)) for q in heldout]
            t = time.perf_counter()
            gen.generate_many(texts, max_tokens=256, temperature=0.0)
            times[fa]["answers"].append(time.perf_counter() - t)
            gen.close()
    print(f"{'work':<10} {'off s':>8} {'on s':>8} {'off/on':>7}")
    for work in ("score", "augment", "answers"):
        off, on = statistics.median(times[False][work]), statistics.median(times[True][work])
        print(f"{work:<10} {off:>8.2f} {on:>8.2f} {off / on:>6.2f}x")
    d = logprobs[True] - logprobs[False]
    print(f"per-token log-prob, on - off, {len(d)} answer tokens: max |d| {np.abs(d).max():.4f}, "
          f"p99 {np.percentile(np.abs(d), 99):.4f}, mean {d.mean():+.5f}")


if __name__ == "__main__":
    main()
