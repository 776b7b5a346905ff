"""Segmentation throughput and memory: MB/s, segments/s and peak RSS for HTML, WARC and plain text.

    python benchmarks/bench_segment.py [--sizes 10 100] [--runs 3] [--kinds html warc text]

Inputs are generated here: web-like pages (navigation, footer, headings, paragraphs recombined from
Python's reference text with random words, so dedup keeps most of them), the same pages in a
gzipped WARC written with warcio, and plain text. Each run is a fresh subprocess, so its peak RSS
is its own. Prints medians over runs; memory should stay flat as the input grows. Then the yield of
each documentation generator's sample page (tests/data/docgen) at the default settings.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

NAV = '<nav><ul><li><a href="/">Home</a></li><li><a href="/docs">Docs</a></li><li><a href="/blog">Blog</a></li></ul></nav>'
FOOT = "<footer><p>Copyright 2025 Example Inc. All rights reserved.</p><p>Share this: Twitter | Facebook</p></footer>"


def _paragraphs() -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for text in topics.values():
        out += [p.replace("\n", " ").strip() for p in text.split("\n\n") if len(p) > 200]
    return out


def _page(rng: random.Random, pars: list[str], words: list[str]) -> str:
    body = []
    for _ in range(rng.randint(2, 4)):
        title = " ".join(rng.sample(words, 3)).capitalize()
        ps = [" ".join(rng.sample(words, 8)).capitalize() + ". " + rng.choice(pars) for _ in range(rng.randint(2, 4))]
        body.append(f"<h2>{title}</h2>" + "".join(f"<p>{p}</p>" for p in ps))
    return f"<!doctype html><html><head><title>t</title></head><body>{NAV}<main><article>{''.join(body)}</article></main>{FOOT}</body></html>"


def generate(kind: str, mb: int, out: Path, seed: int = 0) -> Path:
    rng = random.Random(seed)
    pars = _paragraphs()
    words = sorted({w for p in pars[:200] for w in p.split() if w.isalpha() and len(w) > 3})
    target = mb * 1_000_000
    if kind == "text":
        path = out / f"corpus_{mb}mb.txt"
        with open(path, "w") as f:
            size = 0
            while size < target:
                chunk = " ".join(rng.sample(words, 10)).capitalize() + ". " + rng.choice(pars) + "\n\n"
                f.write(chunk)
                size += len(chunk)
        return path
    if kind == "html":
        d = out / f"site_{mb}mb"
        d.mkdir()
        size, i = 0, 0
        while size < target:
            page = _page(rng, pars, words)
            (d / f"page{i:06d}.html").write_text(page)
            size += len(page)
            i += 1
        return d
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path = out / f"crawl_{mb}mb.warc.gz"
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        size, i = 0, 0
        while size < target:
            page = _page(rng, pars, words).encode()
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(f"http://example.com/p{i}", "response",
                                                payload=io.BytesIO(page), http_headers=http))
            size += len(page)
            i += 1
    return path


RUNNER = """
import json, resource, sys, time
from humpback_lite.corpus import Filters, write_segments
t = time.perf_counter()
funnel = write_segments([sys.argv[1]], sys.argv[2], Filters())
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "segments": funnel.counts["kept"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(path: Path, mb: int, runs: int) -> dict:
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as td:
            out = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(Path(td) / "s.jsonl")],
                                 capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    sec = statistics.median(r["seconds"] for r in results)
    return {"mb_s": mb / sec, "seg_s": statistics.median(r["segments"] for r in results) / sec,
            "rss": statistics.median(r["rss_mb"] for r in results), "segments": results[0]["segments"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kinds", nargs="+", default=["html", "warc", "text"])
    args = ap.parse_args()
    print(f"{'input':8} {'MB':>5} {'MB/s':>7} {'segments/s':>11} {'peak RSS MB':>12} {'segments':>9}")
    with tempfile.TemporaryDirectory() as td:
        for kind in args.kinds:
            for mb in args.sizes:
                path = generate(kind, mb, Path(td))
                r = measure(path, mb, args.runs)
                print(f"{kind:8} {mb:5d} {r['mb_s']:7.2f} {r['seg_s']:11.1f} {r['rss']:12.0f} {r['segments']:9d}", flush=True)
    print(f"(medians of {args.runs} runs; MB = uncompressed bytes; default filters and workers; RSS of the parent)")
    generator_yields()


def generator_yields() -> None:
    """What reaches segments from each documentation generator's HTML (tests/data/docgen: one manual
    rendered by each), at the default settings: the share of the extracted text, and of the
    segments that carry a heading."""
    from humpback_lite import corpus
    from humpback_lite.corpus import Filters
    from humpback_lite.store import read_jsonl

    samples = Path(__file__).resolve().parent.parent / "tests" / "data" / "docgen"
    print(f"\n{'generator':16} {'text kept':>9} {'segments':>9} {'with heading':>13}")
    with tempfile.TemporaryDirectory() as td:
        for page in sorted(samples.glob("*.html")):
            out = Path(td) / f"{page.stem}.jsonl"
            counts = corpus.run([str(page)], out, Filters())
            rows = read_jsonl(out)
            headed = sum(1 for r in rows if r["heading"]) / len(rows)
            print(f"{page.stem:16} {counts.text_yield:9.0%} {len(rows):9d} {headed:13.0%}")


if __name__ == "__main__":
    main()
