"""IFEval (Zhou et al. 2023, arXiv:2311.07911): does a model follow verifiable instructions?

541 prompts such as "answer in fewer than 50 words, with no commas", each scored by deterministic
checkers: no judge model, no network. Four figures per model, as the paper defines them:
prompt-level (every instruction of a prompt followed) and instruction-level (the share of
instructions followed), each strict (the answer as written) and loose (also after removing a first
or last line or markdown asterisks). Each has a 95 % bootstrap interval over prompts, and every model
a paired difference against base and against M0 (the same prompts resampled together).

The checkers are lm-eval's (`lm_eval.tasks.ifeval`, EleutherAI, Apache-2.0): the harness most
published IFEval figures come from, maintained, and Python 3.10-compatible (the lighter
`if-verifiable` needs 3.11). They count sentences with NLTK's English Punkt tables, which lm-eval
downloads at import time; here the tables come from a pinned PyPI wheel that carries them, checked
by sha256 and cached, so evaluation itself touches no network (`punkt_dir`).

The prompts ship in the package (`data/ifeval.jsonl`, CC BY 4.0, Google Research; see
`data/IFEVAL.md`).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from . import layout, models, prompts
from .engines import EngineLike
from .store import file_digest, read_jsonl, resume_jsonl_windows

PROMPTS_SHA256 = "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49"  # the original file

# NLTK's English Punkt tables (punkt_tab) as llama-index-core 0.14.25 (MIT) ships them: the one wheel
# on the package index found to carry them (12 MB; taken with `pip download --no-deps`, not installed).
PUNKT_SOURCE = "llama-index-core==0.14.25"
PUNKT_IN_WHEEL = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/english/"
PUNKT_FILES = {
    "abbrev_types.txt": "92a3e070f43d9b4c5534758ca40ad7343b04e7e29bfe0c2eb658a39445a4f779",
    "collocations.tab": "8e2da1225e4dd2cc9dba261ee231ccb134859e21b46006e7f472c5ee269af0cf",
    "ortho_context.tab": "4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c",
    "sent_starters.txt": "f3f8535483e1dba487241b764945168123bca3209a9645e59acd1225dc76edac",
}

# lm-eval's generation limit for IFEval. The prompts' own length demands, measured: 34 ask for "at
# least N words" (median 350, largest 1200); 1280 tokens hold ~900 words with SmolLM2's tokenizer
# (~1.4 tokens per word), enough for 33 of them.
MAX_NEW_TOKENS = 1280
WINDOW = 32  # prompts answered together (and redone together after a kill)
METRICS = ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose")


class IFEvalError(RuntimeError):
    """The checkers or their data are not available."""


# ----------------------------------------------------------------------------- prompts


def load_prompts() -> list[dict]:
    """The 541 prompts: key, prompt, instruction_id_list, kwargs."""
    path = files("humpback_lite").joinpath("data/ifeval.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def choose(rows: list[dict], size: int | str, seed: int = 0) -> list[dict]:
    """`size` prompts ("all" = every one), seeded, keeping every instruction type: first one prompt
    per type (the rarest types first, so none is left out), then the rest at random; in file order."""
    if size == "all" or int(size) >= len(rows):
        return list(rows)
    n = int(size)
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    counts = Counter(i for r in rows for i in r["instruction_id_list"])
    picked: set[int] = set()
    for kind in sorted(counts, key=lambda k: (counts[k], k)):
        if len(picked) >= n:
            break
        if not any(kind in rows[k]["instruction_id_list"] for k in picked):
            picked.add(next(k for k in order if kind in rows[k]["instruction_id_list"]))
    picked.update([k for k in order if k not in picked][: n - len(picked)])
    return [rows[k] for k in sorted(picked)]


# ----------------------------------------------------------------------------- the checkers


def punkt_dir() -> Path:
    """An NLTK data folder holding the English Punkt tables, fetched once into $HUMPBACK_HOME."""
    root = models.home() / "nltk_data"
    english = root / "tokenizers" / "punkt_tab" / "english"
    missing = {PUNKT_IN_WHEEL + name: english / name for name in PUNKT_FILES if not (english / name).is_file()}
    if missing:
        try:
            models.wheel_files(PUNKT_SOURCE, missing)
        except models.FetchError as e:
            raise IFEvalError(f"IFEval needs NLTK's English Punkt tables (evaluate.ifeval=0 skips IFEval): {e}") from None
    for name, want in PUNKT_FILES.items():
        if file_digest(english / name) != want:
            (english / name).unlink()
            raise IFEvalError(f"{english / name}: sha256 does not match {PUNKT_SOURCE}'s; removed it, "
                              f"run again to fetch it anew")
    return root


@cache
def checkers() -> Any:
    """lm-eval's strict and loose tests, imported with the Punkt tables on NLTK's path (its import
    looks for them and would download them otherwise)."""
    import nltk

    where = str(punkt_dir())
    if where not in nltk.data.path:
        nltk.data.path.insert(0, where)
    nltk.data.find("tokenizers/punkt_tab/english/")  # fail here, by name, rather than download
    try:
        from lm_eval.tasks.ifeval import utils
    except ImportError as e:
        raise IFEvalError(f"IFEval's checkers need lm-eval with its ifeval extra: pip install "
                          f"'lm-eval[ifeval]' ({e})") from None
    return utils


def verdicts(row: dict, response: str) -> dict:
    """Per instruction of `row`: followed strictly / loosely (lm-eval's definitions)."""
    utils = checkers()
    example = utils.InputExample(key=row["key"], instruction_id_list=row["instruction_id_list"],
                                 prompt=row["prompt"], kwargs=row["kwargs"])
    strict = utils.test_instruction_following_strict(example, response)
    loose = utils.test_instruction_following_loose(example, response)
    return {"strict": list(strict.follow_instruction_list), "loose": list(loose.follow_instruction_list)}


# ----------------------------------------------------------------------------- answers


def write_answers(make_engine: Callable[[Path | None], EngineLike], contenders: Sequence[Any], rows: list[dict],
                  path: Path, max_new_tokens: int = MAX_NEW_TOKENS, tags: bool = True, seed: int = 0,
                  on_item: Callable[[], None] | None = None,
                  messages: Callable[[str], prompts.Messages] | None = None) -> None:
    """Each contender's greedy answer to each prompt, appended to `path` window by window. The
    prompt is the user turn under the system prompt the models answer held-out pairs with (or
    what `messages` makes of it)."""
    from .evaluate import LazyEngine  # the engine opens only when a window has an answer missing

    messages = messages or (lambda text: prompts.forward_messages(text, "seed", tags))

    def answer(engine: EngineLike, name: str, chunk: list[dict], emit) -> None:
        texts = [engine.format(messages(r["prompt"])) for r in chunk]
        # one limit for the window, what its longest prompt leaves of the context: the same every run
        room = engine.n_ctx - max(len(engine.tokenize(t)) for t in texts) - 1
        engine.generate_many(texts, max_tokens=max(1, min(max_new_tokens, room)), temperature=0.0,
                             seeds=[seed] * len(chunk),
                             on_done=lambda i, text, why: emit(chunk[i], {
                                 "model": name, "key": chunk[i]["key"], "response": text.strip(),
                                 "cut": why == "length"}))

    for c in contenders:
        engine = LazyEngine(lambda c=c: make_engine(c.adapter))
        try:
            resume_jsonl_windows(path, rows, key=lambda r, c=c: (c.name, r["key"]),
                                 record_key=lambda rec: (rec["model"], rec["key"]), window=WINDOW, on_item=on_item,
                                 work=lambda chunk, emit, c=c, e=engine: answer(e(), c.name, chunk, emit))
        finally:
            engine.close()


# ----------------------------------------------------------------------------- figures


def _per_prompt(results: list[dict]) -> np.ndarray:
    """Rows of (all strict, all loose, strict count, loose count, instructions), one per prompt."""
    return np.array([[all(r["strict"]), all(r["loose"]), sum(r["strict"]), sum(r["loose"]), len(r["strict"])]
                     for r in results], dtype=np.float64)


def _figures(table: np.ndarray) -> np.ndarray:
    """IFEval's four accuracies (%), in METRICS order, of per-prompt rows; with a leading axis of
    resamples, one row of four per resample."""
    total = table.sum(axis=-2)
    n = table.shape[-2]
    return 100 * np.stack([total[..., 0] / n, total[..., 1] / n, total[..., 2] / total[..., 4],
                           total[..., 3] / total[..., 4]], axis=-1)


def _interval(xs: np.ndarray) -> list[float]:
    lo, hi = np.percentile(xs, [2.5, 97.5])
    return [round(float(lo), 2), round(float(hi), 2)]


def summarize(names: list[str], rows: list[dict], path: Path, bootstrap: int = 2000, seed: int = 0,
              size: int | str = "all", max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """metrics.json's `ifeval` part from the answers file: per model the four accuracies with 95 %
    intervals, their headline mean (prompt and instruction level, strict: the Open LLM Leaderboard's
    IFEval figure), accuracy per instruction type, and paired differences against base and M0 (the
    same resampled prompts for both models, so what both find hard cancels out)."""
    answers = {(r["model"], r["key"]): r for r in read_jsonl(path)}
    keys = [r["key"] for r in rows]
    present = [n for n in names if all((n, k) in answers for k in keys)]
    verdict = {(n, r["key"]): verdicts(r, answers[(n, r["key"])]["response"]) for n in present for r in rows}
    tables = {n: _per_prompt([verdict[(n, k)] for k in keys]) for n in present}
    # one set of resamples for every model: the paired differences use it too
    idx = np.random.default_rng(seed).integers(0, len(keys), size=(bootstrap, len(keys)))
    value = {n: _figures(t) for n, t in tables.items()}
    boots = {n: _figures(t[idx]) for n, t in tables.items()}
    out: dict[str, Any] = {"prompts": len(rows), "subset": size, "max_new_tokens": max_new_tokens,
                           "instructions": sum(len(r["instruction_id_list"]) for r in rows),
                           "prompts_sha256": PROMPTS_SHA256, "models": {}}
    for name in present:
        entry: dict[str, Any] = {m: {"value": round(float(value[name][j]), 2), "ci": _interval(boots[name][:, j])}
                                 for j, m in enumerate(METRICS)}
        entry["average"] = round(float(_average(value[name])), 2)
        by_type: dict[str, list[bool]] = {}
        for r in rows:
            for kind, ok in zip(r["instruction_id_list"], verdict[(name, r["key"])]["strict"], strict=True):
                by_type.setdefault(kind, []).append(ok)
        entry["by_type"] = {k: {"n": len(v), "strict": round(100 * sum(v) / len(v), 1)} for k, v in sorted(by_type.items())}
        entry["cut_at_limit"] = sum(1 for k in keys if answers[(name, k)].get("cut"))
        for ref in (layout.BASE, layout.SEED_MODEL) if name != layout.BASE else ():
            if ref != name and ref in present:
                vs = {m: {"diff": round(float(value[name][j] - value[ref][j]), 2),
                          "ci": _interval(boots[name][:, j] - boots[ref][:, j])} for j, m in enumerate(METRICS)}
                # the headline's difference, from the same resamples (a mean of two intervals is not one)
                vs["average"] = {"diff": round(float(_average(value[name]) - _average(value[ref])), 2),
                                 "ci": _interval(_average(boots[name].T) - _average(boots[ref].T))}
                entry[f"vs_{ref}"] = vs
        out["models"][name] = entry
    return out


def _average(figures: np.ndarray) -> np.ndarray:
    """The headline: mean of prompt- and instruction-level strict accuracy (METRICS[0] and [2])."""
    return (figures[0] + figures[2]) / 2


def cell(v: dict | None) -> str:
    """A figure with its interval for tables: "31.2 [27.0, 35.5]"; a difference: "+1.4 [-0.9, 3.6]"."""
    if not v:
        return "-"
    x = v["value"] if "value" in v else v["diff"]
    sign = "+" if "diff" in v and x > 0 else ""
    return f"{sign}{x:.1f}" + (f" [{v['ci'][0]:.1f}, {v['ci'][1]:.1f}]" if v.get("ci") else "")


def describe(m: dict) -> str:
    """One sentence saying which prompts were answered, for the report and the model card."""
    which = "all 541 prompts" if m["subset"] == "all" else f"a seeded subset of {m['prompts']} of the 541 prompts (every instruction type kept)"
    return (f"IFEval (Zhou et al. 2023), {which}, {m['instructions']} instructions; greedy answers of at most "
            f"{m['max_new_tokens']} tokens, checked by lm-eval's rules. Accuracy in %, [95 % bootstrap interval "
            f"over prompts]; average = mean of prompt- and instruction-level strict accuracy.")


def work_units(names: list[str], n_prompts: int) -> int:
    return len(names) * n_prompts
