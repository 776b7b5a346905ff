"""Augment and score throughput through an OpenAI-compatible server vs in process, side by side.

    python benchmarks/bench_remote.py [--pairs 16] [--repeats 3] [--parallel 8]

Starts `python -m llama_cpp.server` on the embedded model (BF16, the file the in-process engine
runs) and measures, on real pydoc segments:
- augment: the backward prompt, up to 48 sampled tokens, through the server (`parallel` requests
  in flight) vs our batched in-process engine and vs our one-sequence engine;
- score: the rubric digit (one next-token read) and one pass of prompt log-probabilities (the
  likelihood signals' unit), through the server vs in process.
Each line: `name: ours X/s, baseline Y/s, ratio Z` (medians over repeats), "ours" being the
remote path. Needs `pip install 'humpback-lite[remote]' 'llama-cpp-python[server]'`.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_engine import timed  # the script's own folder is on sys.path

from humpback_lite import prompts
from humpback_lite.corpus import segment
from humpback_lite.engine import Engine
from humpback_lite.engines import make
from humpback_lite.models import fetch, get_card
from humpback_lite.recipe import EngineConfig
from humpback_lite.runtime import runtime_gguf


def start_server(gguf: Path, folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = folder / "server.json"
    cfg.write_text(json.dumps({"host": "127.0.0.1", "port": port,
                               "models": [{"model": str(gguf), "model_alias": "base", "n_ctx": 2048, "verbose": False}]}))
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("llama_cpp.server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()

    gguf = runtime_gguf(fetch(get_card("smollm2-135m")), "bf16")
    segs = [r["text"] for r in segment(["pydoc:topics"], 600, 1500, max_segments=args.pairs)[0]]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(gguf, Path(tmp))
        try:
            remote = make("smollm2-135m", EngineConfig(backend="openai", base_url=url, parallel=args.parallel))
            batched, single = Engine(gguf, n_ctx=2048, parallel=16), Engine(gguf, n_ctx=2048, parallel=1)
            back = [single.format(prompts.backward_messages(s)) for s in segs]
            seeds = list(range(len(back)))
            gen = {"max_tokens": 48, "temperature": 0.7, "top_p": 0.9, "seeds": seeds}
            n = len(back)
            t_remote = timed(lambda: remote.generate_many(back, **gen), args.repeats)
            for name, eng in (("in-process batched (16)", batched), ("in-process one sequence", single)):
                t = timed(lambda e=eng: e.generate_many(back, **gen), args.repeats)
                print(f"augment vs {name}: ours {n / t_remote:.2f}/s, baseline {n / t:.2f}/s, ratio {t / t_remote:.2f}")

            rubric = [single.format(prompts.rubric_messages("Explain this.", s), assistant_prefix=single.score_prefix)
                      for s in segs]
            t_remote = timed(lambda: [remote.digit_score(p) for p in rubric], args.repeats)
            t_local = timed(lambda: [single.digit_score(p) for p in rubric], args.repeats)
            print(f"score (rubric digit): ours {n / t_remote:.2f}/s, baseline {n / t_local:.2f}/s, "
                  f"ratio {t_local / t_remote:.2f}")
            ctx = single.tokenize(single.format(prompts.forward_messages("Explain this.", tags=True)))
            targets = [single.tokenize(s)[:300] for s in segs]
            t_remote = timed(lambda: [remote.token_logprobs(ctx, t) for t in targets], 1)
            t_local = timed(lambda: [single.token_logprobs(ctx, t) for t in targets], args.repeats)
            print(f"score (prompt log-probabilities, ~300 tokens): ours {n / t_remote:.2f}/s, "
                  f"baseline {n / t_local:.2f}/s, ratio {t_local / t_remote:.3f}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
