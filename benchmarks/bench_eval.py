"""Evaluation and export, side by side with the plain alternative.

    python benchmarks/bench_eval.py [--run runs/quickstart] [--repeats 3] [--judge-pairs 6]

1. Held-out NLL of the 30 held-out seed answers: ours (llama.cpp, logits only at answer positions)
   vs a plain transformers bf16 forward pass with the prompt masked out. Prints pairs/s, the ratio,
   and how far the two NLLs are apart (they read the same weights through different kernels).
2. With --run (a finished run): the exported merged GGUF vs base + the run's GGUF LoRA applied at
   run time: speed on the pairwise-judge load, and the agreement of their next-token logits.
3. With --run: the evaluate stage's pairwise judgments (every matchup of the run's models, both
   orders, the final model judging): a held-out pair's matchups read together (prompts that open
   with the same answer share its evaluation) vs one comparison at a time.
Medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from humpback_lite import prompts
from humpback_lite.engine import Engine
from humpback_lite.evaluate import Judge, answer_nll, matchups_of, mean_nll
from humpback_lite.models import fetch, get_card
from humpback_lite.runtime import runtime_gguf
from humpback_lite.seed import load_seed
from humpback_lite.train import prepare_weights


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_nll(held: list[dict], repeats: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    card = get_card("smollm2-135m")
    gguf = fetch(card)
    engine = Engine(runtime_gguf(gguf, "bf16"), n_ctx=2048)
    weights = prepare_weights(card, gguf)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.bfloat16).eval()

    def hf_nll() -> float:
        total, n = 0.0, 0
        for p in held:
            ctx = engine.tokenize(engine.format(prompts.forward_messages(p["instruction"])))
            tgt = engine.tokenize(p["output"].strip())
            ids = torch.tensor([ctx + tgt])
            with torch.no_grad():
                logits = model(ids).logits[0, len(ctx) - 1:-1].float()
            lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(tgt)[:, None])
            total -= float(lp.sum())
            n += len(tgt)
        return total / n

    t_ours, ours = timed(lambda: mean_nll(answer_nll(engine, held)), repeats)
    t_hf, theirs = timed(hf_nll, repeats)
    n = len(held)
    print(f"held-out NLL  llama.cpp BF16 {n / t_ours:6.2f} pairs/s | transformers bf16 {n / t_hf:6.2f} pairs/s | "
          f"ratio {t_hf / t_ours:.2f}x | NLL {ours:.4f} vs {theirs:.4f}")
    engine.close()


def bench_merged(run: Path, held: list[dict], repeats: int) -> None:
    base = Path(json.loads((run / "manifest.json").read_text())["model"]["gguf"])
    export = run / "export"
    lora = Engine(base, adapter=export / "adapter.gguf", n_ctx=2048)
    merged = Engine(export / "model.gguf", n_ctx=2048)
    plain = Engine(base, n_ctx=2048)
    texts = [lora.format(prompts.forward_messages(p["instruction"])) for p in held[:10]]
    corrs, same = [], 0
    for t in texts:
        toks = plain.tokenize(t)
        b, a, m = plain.next_token_logits(toks), lora.next_token_logits(toks), merged.next_token_logits(toks)
        corrs.append(float(np.corrcoef(m - b, a - b)[0, 1]))
        same += int(a.argmax() == m.argmax())
    print(f"merged vs base+LoRA logits: adapter-change correlation median {statistics.median(corrs):.3f} "
          f"(min {min(corrs):.3f}), same top-1 token {same}/{len(texts)}")

    def judge_load(e: Engine):
        j = Judge(e)
        return [j.p_first(p["instruction"], p["output"], held[-1 - i]["output"]) for i, p in enumerate(held[:10])]

    t_lora, _ = timed(lambda: judge_load(lora), repeats)
    t_merged, _ = timed(lambda: judge_load(merged), repeats)
    print(f"judge load (10 pairwise prompts): base+LoRA {10 / t_lora:.2f}/s | merged {10 / t_merged:.2f}/s | "
          f"ratio {t_lora / t_merged:.2f}x")
    for e in (lora, merged, plain):
        e.close()


def bench_judgments(run: Path, held: list[dict], repeats: int, pairs: int) -> None:
    base = Path(json.loads((run / "manifest.json").read_text())["model"]["gguf"])
    rows = [json.loads(line) for line in (run / "evaluate" / "answers.jsonl").read_text().splitlines()]
    answers = {(r["model"], r["id"]): r["answer"] for r in rows}
    by_id = {p["id"]: p for p in held}
    ids = [i for i in by_id if any(k[1] == i for k in answers)][:pairs]
    matchups = matchups_of(list(dict.fromkeys(r["model"] for r in rows)))
    judge = Judge(Engine(base, adapter=run / "export" / "adapter.gguf", n_ctx=2048))
    per_id = [[(by_id[i]["instruction"], answers[(a, i)], answers[(b, i)]) for a, b in matchups] for i in ids]

    t_ours, ours = timed(lambda: [v for items in per_id for v in judge.compare_many(items)], repeats)
    t_one, one = timed(lambda: [judge.compare(*item) for items in per_id for item in items], repeats)
    n = sum(len(x) for x in per_id)
    same = sum(a["outcome"] == b["outcome"] for a, b in zip(ours, one, strict=True))
    print(f"judgments ({n} matchups, both orders): ours {n / t_ours:.2f}/s, baseline (one at a time) "
          f"{n / t_one:.2f}/s, ratio {t_one / t_ours:.2f} | same outcome {same}/{n}")
    judge.engine.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, help="A finished run folder (for the merged-GGUF comparison).")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--judge-pairs", type=int, default=6, help="held-out pairs whose matchups are judged")
    args = ap.parse_args()
    _, held = load_seed("builtin:seed", 30)
    bench_nll(held, args.repeats)
    if args.run:
        bench_merged(args.run, held, args.repeats)
        bench_judgments(args.run, held, args.repeats, args.judge_pairs)
    print(f"(medians of {args.repeats} runs)")


if __name__ == "__main__":
    main()
