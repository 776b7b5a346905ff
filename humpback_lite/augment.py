"""Self-augmentation: the backward model writes an instruction for every segment.

Appends one JSONL record per segment and resumes after the last complete line. Each segment is
sampled with its own seed (derived from the run seed and the segment id), so a resumed run
writes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path

from . import prompts
from .engines import EngineFactory, EngineLike
from .layout import AugmentCounts
from .progress import Progress, silent
from .recipe import AugmentConfig, RayConfig
from .store import read_jsonl, resume_jsonl_windows, resume_window, unique_ids


def item_seed(seed: int, item_id: str) -> int:
    return int(hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()[:8], 16) % (2**31 - 1)


def backward_prompt(engine: EngineLike, text: str, max_segment_tokens: int) -> str:
    return engine.format(prompts.backward_messages(engine.truncate(text, max_segment_tokens)))


def _pair(seg: dict, raw: str) -> dict:
    return {"id": seg["id"], "instruction": prompts.clean_instruction(raw), "output": seg["text"],
            "provenance": seg.get("provenance", seg.get("source", "")),  # older segment files: `source`
            "raw": raw}


def write_window(engine: EngineLike, segs: list[dict], emit: Callable[[dict, dict], None], cfg: AugmentConfig,
                 seed: int) -> None:
    """One resume window: every segment's instruction, `engine.parallel` per decode."""
    engine.generate_many([backward_prompt(engine, s["text"], cfg.max_segment_tokens) for s in segs],
                         max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                         seeds=[item_seed(seed, s["id"]) for s in segs],
                         on_done=lambda i, raw, why: emit(segs[i], _pair(segs[i], raw)))


def augment(
    engine: EngineLike,
    segments: list[dict],
    out_path: str | Path,
    cfg: AugmentConfig,
    seed: int = 0,
    on_item: Callable[[], None] | None = None,
) -> AugmentCounts:
    """Write `{"id", "instruction", "output", "provenance", "raw"}` per segment to out_path, up to
    `engine.parallel` segments per llama.cpp decode; each segment's seed fixes its instruction."""
    done, new = resume_jsonl_windows(out_path, segments, key=lambda s: s["id"],
                                     work=lambda segs, emit: write_window(engine, segs, emit, cfg, seed),
                                     window=resume_window(engine.parallel), on_item=on_item)
    return AugmentCounts(pairs=done + new, resumed_from=done)


def run(segments: Path, out: Path, cfg: AugmentConfig, engines: EngineFactory, adapter: Path | None,
        seed: int = 0, progress: Progress = silent, ray: RayConfig | None = None) -> AugmentCounts:
    """The augment stage: `segments` (JSONL with `text`; `id` assigned by line when missing) ->
    `out` (pairs, appended and resumable), written by the backward model `adapter`; with `ray`,
    by Ray workers, each holding its own engine (`engines` must then be an `Engines`)."""
    rows = read_jsonl(segments, required=("text",))
    for i, r in enumerate(rows):
        r.setdefault("id", f"seg-{i:06d}")
    unique_ids(rows, segments)
    with progress("augment", len(rows)) as advance:
        if ray is not None:
            from .cluster import RayPool

            pool = RayPool(ray, functools.partial(engines, adapter), functools.partial(write_window, cfg=cfg, seed=seed))
            done, new = resume_jsonl_windows(out, rows, key=lambda s: s["id"], work=None, pool=pool,
                                             window=resume_window(engines.parallel), on_item=advance)
            counts = AugmentCounts(pairs=done + new, resumed_from=done)
        else:
            engine = engines(adapter)
            try:
                counts = augment(engine, rows, out, cfg, seed, on_item=advance)
            finally:
                engine.close()
    counts.empty_instructions = sum(1 for p in read_jsonl(out) if not p["instruction"].strip())
    return counts
