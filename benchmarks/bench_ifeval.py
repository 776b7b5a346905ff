"""IFEval of one model, as the evaluate stage runs it and as a plain chat harness would: the
calibration against published figures.

    python benchmarks/bench_ifeval.py [--model smollm2-135m] [--adapter A.gguf] [--prompts all|N]
                                      [--max-new-tokens 1280] [--out runs/bench_ifeval]

Two prompt formats, side by side on the same prompts and engine:
- ours: the user turn under the system prompt every model of a run answers with (the seed tag);
- plain: the user turn alone, under the chat template's own default (what lm-eval's and
  lighteval's chat runs send).
Prints IFEval's four accuracies with 95 % intervals, the headline average, seconds, answer lengths
in tokens (median, 90th percentile, max) and how many answers reached the token limit. Answers are
kept in --out (resumable: a rerun scores the same answers without generating them again).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from humpback_lite import ifeval, prompts
from humpback_lite.engines import factory
from humpback_lite.evaluate import Contender
from humpback_lite.recipe import EngineConfig
from humpback_lite.store import read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter", type=Path)
    ap.add_argument("--prompts", default="all")
    ap.add_argument("--max-new-tokens", type=int, default=ifeval.MAX_NEW_TOKENS)
    ap.add_argument("--runtime-type", default="auto")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_ifeval"))
    ap.add_argument("--formats", default="ours,plain")
    args = ap.parse_args()

    size = args.prompts if args.prompts == "all" else int(args.prompts)
    rows = ifeval.choose(ifeval.load_prompts(), size, seed=0)
    ifeval.checkers()
    engines = factory(args.model, EngineConfig(runtime_type=args.runtime_type))
    formats = {"ours": lambda text: prompts.forward_messages(text, "seed", True),
               "plain": lambda text: [{"role": "user", "content": text}]}
    print(f"IFEval, {len(rows)} prompts, model {args.model}{' + ' + str(args.adapter) if args.adapter else ''}, "
          f"runtime {engines.cfg.runtime_type}, at most {args.max_new_tokens} new tokens")
    for name in args.formats.split(","):
        path = args.out / f"{name}.jsonl"
        t = time.perf_counter()
        ifeval.write_answers(engines, [Contender("base", args.adapter)], rows, path, args.max_new_tokens,
                             messages=formats[name])
        seconds = time.perf_counter() - t
        m = ifeval.summarize(["base"], rows, path, seed=0, size=size, max_new_tokens=args.max_new_tokens)["models"]["base"]
        engine = engines(None, batched=False)
        lengths = sorted(len(engine.tokenize(r["response"])) for r in read_jsonl(path))
        engine.close()
        figures = "  ".join(f"{k} {ifeval.cell(m[k])}" for k in ifeval.METRICS)
        print(f"{name:6s} average {m['average']:5.1f}  {figures}")
        print(f"       {seconds:.0f} s generating (0 when the answers were there), answer tokens median "
              f"{statistics.median(lengths):.0f}, p90 {lengths[int(0.9 * (len(lengths) - 1))]}, max {lengths[-1]}; "
              f"{m['cut_at_limit']} of {len(rows)} cut at the limit")
        (args.out / f"{name}.summary.json").write_text(json.dumps(m, indent=1))


if __name__ == "__main__":
    main()
