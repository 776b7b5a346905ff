"""Which tensor type llama.cpp should run, on the loop's real work: the score stage's likelihood
passes (prompt-heavy, log-probs at every answer token, a LoRA applied) and augment's batched
generation, timed for the shipped file, its Q8_0 copy and its BF16 copy side by side in one run,
beside what `engine.runtime_type: auto` chose from its short probe.

    python benchmarks/bench_runtime.py RUN [--pairs 12] [--repeats 2]

RUN: a finished run folder (its augment/pairs.jsonl, M0 and backward adapters). Prints seconds per
type (median of repeats) and the ratio to the fastest, for scoring and for generation. Run it alone
on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from humpback_lite.engine import Engine
from humpback_lite.models import fetch, get_card
from humpback_lite.recipe import EngineConfig, load_recipe
from humpback_lite.runtime import cached_choice, runtime_gguf
from humpback_lite.signals import Scorer
from humpback_lite.store import read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    run = Path(args.run)
    recipe = load_recipe(run / "recipe.yaml")
    gguf = fetch(get_card(recipe.model))
    pairs = [(p["instruction"], p["output"]) for p in read_jsonl(run / "augment" / "pairs.jsonl")
             if p["instruction"].strip()][: args.pairs]
    segments = [p[1] for p in pairs]
    n_ctx = recipe.engine.n_ctx
    results: dict[str, dict[str, float]] = {}
    for kind in ("original", "q8_0", "bf16"):
        path = runtime_gguf(gguf, kind)
        score_s, gen_s = [], []
        for _ in range(args.repeats):
            judge = Engine(path, adapter=run / "round_00" / "train" / "adapter.gguf", n_ctx=n_ctx, parallel=1)
            back = Engine(path, adapter=run / "backward" / "adapter.gguf", n_ctx=n_ctx, parallel=1)
            t = time.perf_counter()
            scorer = Scorer(judge, back, max_answer_tokens=recipe.curate.max_answer_tokens)
            scorer.likelihoods(pairs, ["pmi", "ifd", "backward"])
            score_s.append(time.perf_counter() - t)
            judge.close()
            back.close()
            gen = Engine(path, adapter=run / "backward" / "adapter.gguf", n_ctx=n_ctx, parallel=16)
            prompts = [gen.format([{"role": "user", "content": s[:1500]}]) for s in segments]
            t = time.perf_counter()
            gen.generate_many(prompts, max_tokens=recipe.augment.max_new_tokens, temperature=0.7, top_p=0.9)
            gen_s.append(time.perf_counter() - t)
            gen.close()
        results[kind] = {"score": statistics.median(score_s), "generate": statistics.median(gen_s)}
        print(f"{kind:9} score {results[kind]['score']:7.1f} s   generate {results[kind]['generate']:7.1f} s", flush=True)
    for work in ("score", "generate"):
        best = min(results, key=lambda k: results[k][work])
        print(f"{work}: fastest {best}; " + ", ".join(
            f"{k} {results[k][work] / results[best][work]:.2f}x" for k in results))
    chosen = cached_choice(gguf, EngineConfig())
    print(f"runtime_type auto chose: {chosen['chosen'] if chosen else '(not measured yet)'} "
          f"({args.pairs} pairs, medians of {args.repeats}; score = pmi, ifd and backward passes)")


if __name__ == "__main__":
    main()
