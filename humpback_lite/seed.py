"""The seed set: human-written (instruction, output) pairs, split into train and held-out rows."""

from __future__ import annotations

from pathlib import Path

from .store import DataError, file_digest, read_jsonl, unique_ids

BUILTIN = "builtin:seed"


def seed_path(ref: str) -> Path:
    if ref == BUILTIN:
        return Path(__file__).resolve().parent / "data" / "seed.jsonl"
    return Path(ref).expanduser()


def seed_digest(ref: str) -> str:
    return file_digest(seed_path(ref))


def load_seed(ref: str, heldout: int, max_seed: int | None = None) -> tuple[list[dict], list[dict]]:
    """Return (train, heldout). Rows marked `"split": "heldout"` are held out first; if there are
    fewer than `heldout`, the last unmarked rows make up the rest."""
    rows = read_jsonl(seed_path(ref), required=("instruction", "output"))
    for i, row in enumerate(rows):
        row.setdefault("id", f"seed-{i:03d}")
    unique_ids(rows, seed_path(ref))
    if heldout >= len(rows):
        raise DataError(f"{ref}: {len(rows)} seed rows but data.heldout={heldout}: nothing left to train on")
    marked = [r for r in rows if r.get("split") == "heldout"]
    unmarked = [r for r in rows if r.get("split") != "heldout"]
    held = marked[:heldout]
    if len(held) < heldout:
        need = heldout - len(held)
        held += unmarked[len(unmarked) - need:]
        unmarked = unmarked[: len(unmarked) - need]
    held_ids = {r["id"] for r in held}
    train = unmarked + [r for r in marked if r["id"] not in held_ids]
    if max_seed is not None:
        train = train[:max_seed]
    return train, held
