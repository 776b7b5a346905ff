"""Unlabelled text -> candidate answers (segments of min_chars..max_chars).

Inputs: `pydoc:topics` (Python's own reference prose, always offline), `.txt` / `.md` files,
`.jsonl` with a `text` field, and directories of those. Text is split into paragraphs (and at
Markdown headings), paragraphs are packed into segments inside the length window, and exact
duplicates are dropped. A funnel of counts per reason is returned with the segments.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".jsonl"}
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_HEADING = re.compile(r"^#{1,6}\s+\S")


class CorpusError(ValueError):
    pass


@dataclass
class Document:
    text: str
    source: str


@dataclass
class Funnel:
    counts: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.counts["files_skipped"] += 1


def read_documents(ref: str, funnel: Funnel) -> Iterator[Document]:
    if ref == "pydoc:topics":
        from pydoc_data.topics import topics

        for name in sorted(topics):
            yield Document(topics[name], f"pydoc:topics/{name}")
        return
    path = Path(ref).expanduser()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES:
                yield from read_documents(str(p), funnel)
        return
    if not path.exists():
        raise CorpusError(f"{ref}: no such file or directory")
    try:
        raw = path.read_bytes()
    except OSError as e:
        funnel.warn(f"{path}: unreadable ({e.strerror}); skipped")
        return
    if b"\x00" in raw[:4096]:
        funnel.warn(f"{path}: binary file; skipped")
        return
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text:
        funnel.counts["invalid_utf8_files"] += 1
    if path.suffix.lower() == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                body = row["text"]
                if not isinstance(body, str):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                funnel.counts["malformed_lines"] += 1
                if funnel.counts["malformed_lines"] <= 3:
                    funnel.warnings.append(f"{path}:{i}: not a JSON object with a string `text`; skipped")
                continue
            yield Document(body, f"{path}:{i}")
        return
    yield Document(text, str(path))


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks; a Markdown heading always starts a new block."""
    out: list[str] = []
    cur: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip() or _HEADING.match(line):
            if cur:
                out.append("\n".join(cur).strip())
                cur = []
            if line.strip():
                cur.append(line.lstrip("#").strip())
            continue
        cur.append(line.rstrip())
    if cur:
        out.append("\n".join(cur).strip())
    return [p for p in out if p]


def _split_long(par: str, max_chars: int) -> list[str]:
    """Split a block longer than max_chars at sentence ends (hard-cut if a sentence is too long)."""
    pieces, cur = [], ""
    for sent in _SENTENCE.split(par):
        while len(sent) > max_chars:
            pieces.append(sent[:max_chars])
            sent = sent[max_chars:]
        if cur and len(cur) + 1 + len(sent) > max_chars:
            pieces.append(cur)
            cur = sent
        else:
            cur = f"{cur} {sent}".strip()
    if cur:
        pieces.append(cur)
    return pieces


def pack(text: str, min_chars: int, max_chars: int) -> tuple[list[str], int]:
    """Pack paragraphs greedily into segments of at most max_chars; keep those >= min_chars.
    Returns (segments, number of too-short leftovers dropped)."""
    blocks: list[str] = []
    for par in paragraphs(text):
        blocks.extend(_split_long(par, max_chars) if len(par) > max_chars else [par])
    segments, short, cur = [], 0, ""
    for block in blocks:
        if cur and len(cur) + 2 + len(block) > max_chars:
            if len(cur) >= min_chars:
                segments.append(cur)
            else:
                short += 1
            cur = block
        else:
            cur = f"{cur}\n\n{block}" if cur else block
    if cur:
        if len(cur) >= min_chars:
            segments.append(cur)
        else:
            short += 1
    return segments, short


def _norm_hash(text: str) -> str:
    return hashlib.sha1(re.sub(r"\W+", " ", text.lower()).strip().encode()).hexdigest()


def _repetitive(text: str, threshold: float = 0.5) -> bool:
    """True when most lines repeat another line of the same segment (menus, tables of links)."""
    lines = [ln.strip().lower() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 4:
        return False
    return 1 - len(set(lines)) / len(lines) > threshold


def segment(
    refs: list[str], min_chars: int = 600, max_chars: int = 3000, max_segments: int | None = None
) -> tuple[list[dict], Funnel]:
    """Segment every input; returns (records with id/text/source, funnel)."""
    funnel = Funnel()
    seen: set[str] = set()
    records: list[dict] = []
    for ref in refs:
        for doc in read_documents(ref, funnel):
            funnel.counts["documents"] += 1
            segs, short = pack(doc.text, min_chars, max_chars)
            funnel.counts["dropped_too_short"] += short
            for i, text in enumerate(segs):
                funnel.counts["candidates"] += 1
                if _repetitive(text):
                    funnel.counts["dropped_repetitive"] += 1
                    continue
                h = _norm_hash(text)
                if h in seen:
                    funnel.counts["dropped_duplicate"] += 1
                    continue
                seen.add(h)
                records.append({"text": text, "source": doc.source, "part": i})
    funnel.counts["kept"] = len(records)
    if max_segments is not None and len(records) > max_segments:
        # An even sample across the corpus, not just its first files.
        step = len(records) / max_segments
        records = [records[int(i * step)] for i in range(max_segments)]
        funnel.counts["sampled"] = len(records)
    for n, rec in enumerate(records):
        rec["id"] = f"seg-{n:06d}"
    return records, funnel
