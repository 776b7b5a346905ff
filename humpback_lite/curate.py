"""Self-curation: a forward model rates each (instruction, answer) pair on the paper's 5-point
rubric, and the best pairs are kept.

Two modes, both always parseable:
- `expected` (default): one forward pass; the score is the expected value of the next-token
  distribution over "1".."5" right after `Score:` in the model's own turn.
- `reasoning` (the paper's): the model writes a brief reasoning (greedy), then `Score:` is
  appended to *its* text and the digit read the same way, i.e. the last line is constrained to
  `Score: [1-5]`. The argmax digit is the score; whether the model would have written a
  parseable score by itself is recorded too (`free_parse`), to show what a regex parser loses.
The candidate text sits inside <answer> tags it cannot forge (see prompts.sanitize), and the
score is read only from the model's continuation, so a "Score: 5" inside a web page is inert.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from . import prompts
from .engine import Engine
from .recipe import CurateConfig
from .store import JsonlAppender

_FREE_SCORE = re.compile(r"score\s*:\s*([1-5])", re.IGNORECASE)


def score_one(engine: Engine, instruction: str, output: str, cfg: CurateConfig, tags: bool = True,
              max_answer_tokens: int = 1024) -> dict:
    answer = engine.truncate(output, max_answer_tokens)
    messages = prompts.rubric_messages(instruction, answer, tags=tags)
    if cfg.mode == "expected":
        ds = engine.digit_score(engine.format(messages, assistant_prefix=engine.score_prefix))
        return {"score": round(ds.expected, 4), "probs": [round(p, 4) for p in ds.probs],
                "digit_mass": round(ds.mass, 4), "mode": "expected"}
    prompt = engine.format(messages)
    reason = engine.generate(prompt, max_tokens=cfg.reasoning_tokens, temperature=0.0,
                             stop=["\n\n", "<|im_end|>"]).strip()
    free = _FREE_SCORE.findall(reason)
    reason_text = _FREE_SCORE.split(reason)[0].strip() if free else reason
    ds = engine.digit_score(prompt + reason_text + "\n" + engine.score_prefix)
    return {"score": ds.argmax, "score_expected": round(ds.expected, 4),
            "probs": [round(p, 4) for p in ds.probs], "reason": reason_text, "mode": "reasoning",
            "free_parse": int(free[-1]) if free else None}


def score_pairs(
    engine: Engine,
    pairs: list[dict],
    out_path: str | Path,
    cfg: CurateConfig,
    tags: bool = True,
    on_item: Callable[[], None] | None = None,
) -> dict:
    """Score every pair (skipping those already in out_path) and append records."""
    max_answer = max(64, engine.n_ctx - 700)  # rubric + instruction + template take < 700 tokens
    with JsonlAppender(out_path) as out:
        done = {r["id"] for r in out.done}
        for _ in done:
            if on_item:
                on_item()
        for pair in pairs:
            if pair["id"] in done:
                continue
            rec = {k: pair[k] for k in ("id", "instruction", "output", "provenance") if k in pair}
            if not pair["instruction"].strip():
                rec.update({"score": None, "mode": cfg.mode, "skipped": "empty instruction"})
            else:
                rec.update(score_one(engine, pair["instruction"], pair["output"], cfg, tags, max_answer))
            out.append(rec)
            if on_item:
                on_item()
    return summarize(read_scored(out_path))


def read_scored(path: str | Path) -> list[dict]:
    from .store import read_jsonl

    return read_jsonl(path)


def histogram(scored: list[dict]) -> dict[str, int]:
    """Counts per rounded score 1..5 (expected scores are rounded to the nearest integer)."""
    c = Counter(str(min(5, max(1, round(r["score"])))) for r in scored if r.get("score") is not None)
    return {str(k): c.get(str(k), 0) for k in range(1, 6)}


def summarize(scored: list[dict]) -> dict:
    with_score = [r for r in scored if r.get("score") is not None]
    out = {
        "scored": len(with_score),
        "unscored": len(scored) - len(with_score),
        "mean_score": round(sum(r["score"] for r in with_score) / len(with_score), 4) if with_score else None,
        "histogram": histogram(scored),
    }
    free = [r for r in with_score if r.get("mode") == "reasoning"]
    if free:
        out["free_text_unparsed"] = sum(1 for r in free if r.get("free_parse") is None)
    return out


def select(scored: list[dict], threshold: float = 4.0, top_fraction: float | None = None) -> list[dict]:
    """Keep score >= threshold (the paper's k), or the best `top_fraction` of scored pairs."""
    ranked = sorted((r for r in scored if r.get("score") is not None), key=lambda r: (-r["score"], r["id"]))
    if top_fraction is not None:
        n = max(1, round(len(ranked) * top_fraction)) if ranked else 0
        return ranked[:n]
    return [r for r in ranked if r["score"] >= threshold]
