"""Wall time per stage of a whole run (by default the quickstart), from the run's own manifest.

    python benchmarks/bench_loop.py [RECIPE] [--out DIR] [KEY=VALUE ...]

Runs the recipe into DIR (default: a fresh temp folder; an existing finished run is only read), then
prints each stage's seconds and share of the total, the training stages' tokens/s, and the total
in minutes, and the peak resident memory. Run it alone on the machine: anything else on the cores distorts every figure.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from humpback_lite.layout import TrainCounts
from humpback_lite.loop import Loop
from humpback_lite.recipe import load_recipe
from humpback_lite.store import Run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", nargs="?", default=str(Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"))
    ap.add_argument("--out", help="run folder (default: a new temp folder)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()  # overrides may follow --out, as the usage line shows

    out = Path(args.out or tempfile.mkdtemp(prefix="bench_loop-"))
    t = time.perf_counter()
    Loop(load_recipe(args.recipe, args.overrides), out).run()
    wall = time.perf_counter() - t
    stages = Run(out).manifest["stages"]
    total = sum(v.get("seconds") or 0 for v in stages.values())
    print(f"{'stage':18} {'seconds':>8} {'share':>6}  notes")
    for name, v in stages.items():
        sec = v.get("seconds") or 0
        c = TrainCounts.of(v.get("counts"))
        note = f"{c.tokens_per_second} tokens/s over {c.rows} rows" if c.tokens_per_second else ""
        print(f"{name:18} {sec:8.1f} {sec / total:6.1%}  {note}")
    print(f"stages {total / 60:.1f} min; this command {wall / 60:.1f} min (a resumed run only counts what ran); {out}")
    # ru_maxrss is KiB on Linux; the loop runs every stage in this process (children: converters)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(f"peak RSS {peak / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
