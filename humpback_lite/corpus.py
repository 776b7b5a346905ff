"""Documents -> candidate answers, filtered as in the paper.

Per document: boilerplate lines out (cookie banners, menus, "share this"), a heading check
(empty, all-caps or navigation-like headings are dropped, where the format has headings),
paragraphs packed into segments of min_chars..max_chars. Per segment: repetition (word 3-grams
shared between its sentences), optional language check, exact dedup (normalised hash) and
near-dedup (MinHash LSH, datasketch). Every drop is counted per reason in a funnel.

Streams: documents come one at a time from `readers`, segments go out one at a time; memory is
bounded by the dedup index (a hash and a MinHash per kept segment) and, with `max_segments`, a
reservoir of that many segments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import random
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .layout import CorpusCounts
from .readers import CorpusError, Document, Funnel, documents, html_sections, input_bytes  # noqa: F401
from .store import atomic_path

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+")
_BOILERPLATE = re.compile(
    r"^\W*(?:accept(?: all)? cookies|we use cookies|this (?:site|website) uses cookies|cookie (?:policy|settings)"
    r"|share (?:this|on)\b|follow us|subscribe(?: now| to)?\b|sign (?:in|up)\b|log ?in\b|log ?out\b"
    r"|all rights reserved|copyright\b|©|skip to (?:main )?content|back to top|read more\b|privacy policy"
    r"|terms (?:of|and) (?:use|service|conditions)|home\s*[|>»/]|you are here:|previous\s*[|/]\s*next"
    r"|advertisement\b|related (?:posts|articles)\b|leave a (?:comment|reply)|table of contents\W*$)",
    re.IGNORECASE,
)
_NAV_HEADINGS = {
    "home", "menu", "navigation", "main menu", "contact", "contact us", "about", "about us", "login", "log in",
    "sign in", "sign up", "search", "share", "share this", "related", "related posts", "related articles",
    "comments", "leave a comment", "footer", "copyright", "privacy policy", "terms", "sitemap", "categories",
    "tags", "archives", "recent posts", "popular posts", "follow us", "newsletter", "subscribe", "navigate",
    "table of contents", "contents", "previous", "next", "references", "see also", "external links",
}
_EN_STOPWORDS = {"the", "and", "of", "to", "a", "in", "is", "that", "it", "for", "on", "with", "as", "are",
                 "this", "be", "by", "or", "an", "not", "you", "from", "at", "can", "have", "which", "if"}


@dataclass
class Filters:
    """The corpus settings (recipe section `data`, fields of the same names)."""

    min_chars: int = 600
    max_chars: int = 3000
    repetition: float = 0.3
    headers: bool = True
    boilerplate: bool = True
    language: str | None = None
    dedup: str = "minhash"
    dedup_threshold: float = 0.8
    text_field: str = "text"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, data: Any) -> Filters:
        """The filters a recipe's `data` section describes (same field names)."""
        return cls(**{f.name: getattr(data, f.name) for f in dataclasses.fields(cls)})


# ----------------------------------------------------------------------------- per document


def strip_boilerplate(text: str, funnel: Funnel) -> str:
    out = []
    for line in text.splitlines():
        if len(line) < 100 and _BOILERPLATE.match(line.strip()):
            funnel.counts["boilerplate_lines"] += 1
            continue
        out.append(line)
    return "\n".join(out)


def bad_heading(heading: str | None) -> str | None:
    """Why a heading disqualifies its section (paper: empty, all-caps, navigation-like), or None."""
    if heading is None:
        return None  # the format has no headings
    h = heading.strip().strip(":").strip()
    if not h:
        return "empty_heading"
    letters = [c for c in h if c.isalpha()]
    if len(letters) >= 4 and all(c.isupper() for c in letters):
        return "allcaps_heading"
    if h.lower() in _NAV_HEADINGS:
        return "navigation_heading"
    return None


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks; a Markdown heading line always starts a new block."""
    out: list[str] = []
    cur: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip() or re.match(r"^#{1,6}\s+\S", line):
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
    Returns (segments, number of too-short pieces dropped)."""
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


# ----------------------------------------------------------------------------- per segment


def repetition(text: str) -> float:
    """Share of a segment's word 3-grams that also occur in another of its sentences (or lines):
    high for menus, lists of links, tag clouds and spun text."""
    units = [u for u in re.split(r"(?<=[.!?])\s+|\n+", text) if u.strip()]
    if len(units) < 3:
        return 0.0
    grams_per_unit = []
    for u in units:
        words = _WORD.findall(u.lower())
        grams_per_unit.append({tuple(words[j:j + 3]) for j in range(max(0, len(words) - 2))} or {tuple(words)})
    first_unit: dict[tuple[str, ...], int] = {}
    shared: set[tuple[str, ...]] = set()
    for i, grams in enumerate(grams_per_unit):
        for g in grams:
            if first_unit.setdefault(g, i) != i:
                shared.add(g)
    total = sum(len(g) for g in grams_per_unit)
    repeated = sum(1 for grams in grams_per_unit for g in grams if g in shared)
    return repeated / total if total else 0.0


def looks_english(text: str) -> bool:
    words = _WORD.findall(text.lower())
    return bool(words) and sum(w in _EN_STOPWORDS for w in words) / len(words) >= 0.08


def _norm_hash(text: str) -> str:
    return hashlib.sha1(" ".join(_WORD.findall(text.lower())).encode()).hexdigest()


class NearDuplicates:
    """MinHash LSH over word 5-gram shingles (datasketch)."""

    def __init__(self, threshold: float, num_perm: int = 64):
        from datasketch import MinHash, MinHashLSH

        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.num_perm = num_perm
        template = MinHash(num_perm=num_perm, seed=1)
        self.perms, self.scheme = template.permutations, template.scheme  # made once, not per segment
        self.n = 0

    def seen(self, text: str) -> bool:
        from datasketch import MinHash

        words = _WORD.findall(text.lower())
        shingles = {" ".join(words[i:i + 5]) for i in range(max(1, len(words) - 4))}
        # crc32: a deterministic 32-bit hash in C, ~3x faster here than datasketch's default sha1
        m = MinHash(num_perm=self.num_perm, hashfunc=zlib.crc32, permutations=self.perms, scheme=self.scheme)
        m.update_batch([s.encode() for s in shingles])
        if self.lsh.query(m):
            return True
        self.lsh.insert(str(self.n), m)
        self.n += 1
        return False


# ----------------------------------------------------------------------------- the pipeline


def process_document(doc: Document, f: Filters) -> tuple[list[tuple[str, str | None]], Counter]:
    """Everything that needs only one document: HTML extraction, heading rule, boilerplate, packing,
    repetition and language. Runs in worker processes; dedup stays in the parent."""
    counts: Counter = Counter()
    docs = list(html_sections(doc.text, doc.source, doc.offset)) if doc.kind == "html" else [doc]
    counts["documents"] += len(docs) if doc.kind == "html" else 1
    out = []
    for d in docs:
        counts["chars_extracted"] += len(d.text)
        if f.headers and (why := bad_heading(d.heading)):
            counts[f"dropped_{why}"] += 1
            continue
        funnel = Funnel(counts=counts)
        text = strip_boilerplate(d.text, funnel) if f.boilerplate else d.text
        segs, short = pack(text, f.min_chars, f.max_chars)
        counts["dropped_too_short"] += short
        for seg in segs:
            counts["candidates"] += 1
            if f.repetition and repetition(seg) > f.repetition:
                counts["dropped_repetitive"] += 1
            elif f.language == "en" and not looks_english(seg):
                counts["dropped_language"] += 1
            else:
                out.append((seg, d.heading))
    return out, counts


def _default_workers(refs: list[str]) -> int:
    """Parallel only for inputs big enough to repay starting the worker processes (~1 s)."""
    size = input_bytes(refs)
    if size is not None and size < 8_000_000:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def iter_segments(refs: list[str], f: Filters, funnel: Funnel,
                  on_bytes: Callable[[int], None] | None = None, workers: int | None = None) -> Iterator[dict]:
    """Yield `{"text", "provenance", "heading", "offset"}` for every segment that passes the filters.
    Per-document work runs in `workers` processes (HTML extraction dominates); order is kept."""
    exact: set[str] = set()
    near = NearDuplicates(f.dedup_threshold) if f.dedup == "minhash" else None
    workers = workers or _default_workers(refs)
    # forkserver: workers fork from a clean server process, not from one that may hold llama.cpp
    # or torch threads
    pool = multiprocessing.get_context("forkserver").Pool(workers) if workers > 1 else None
    try:
        for ref in refs:
            docs = documents(ref, funnel, f.text_field, f.include, f.exclude, on_bytes)
            mapper = pool.imap(partial(_process, f=f), docs, chunksize=4) if pool else (_process(d, f) for d in docs)
            for (segs, counts), (source, offset) in mapper:
                funnel.counts.update(counts)
                for text, heading in segs:
                    if f.dedup != "none":
                        h = _norm_hash(text)
                        if h in exact:
                            funnel.counts["dropped_duplicate"] += 1
                            continue
                        exact.add(h)
                        if near is not None and near.seen(text):
                            funnel.counts["dropped_near_duplicate"] += 1
                            continue
                    funnel.counts["kept"] += 1
                    funnel.counts["chars_kept"] += len(text)
                    yield {"text": text, "provenance": source, "heading": heading, "offset": offset}
    finally:
        if pool:
            pool.terminate()


def _process(doc: Document, f: Filters):
    return process_document(doc, f), (doc.source, doc.offset)


def segment(refs: list[str], min_chars: int = 600, max_chars: int = 3000, max_segments: int | None = None,
            filters: Filters | None = None, seed: int = 0, on_bytes: Callable[[int], None] | None = None,
            workers: int | None = None) -> tuple[list[dict], Funnel]:
    """All segments as a list (ids `seg-NNNNNN` in corpus order). With max_segments, a uniform
    sample of that many, kept in corpus order (reservoir sampling: memory stays bounded)."""
    # a copy: the caller's Filters must not change under it
    f = dataclasses.replace(filters or Filters(), min_chars=min_chars, max_chars=max_chars)
    funnel = Funnel()
    stream = iter_segments(refs, f, funnel, on_bytes, workers)
    if max_segments is None:
        records = list(stream)
    else:
        rng = random.Random(seed)
        reservoir: list[tuple[int, dict]] = []
        for i, rec in enumerate(stream):
            if i < max_segments:
                reservoir.append((i, rec))
            elif (j := rng.randint(0, i)) < max_segments:
                reservoir[j] = (i, rec)
        records = [rec for _, rec in sorted(reservoir, key=lambda t: t[0])]
        if funnel.counts["kept"] > len(records):
            funnel.counts["sampled"] = len(records)
    for n, rec in enumerate(records):
        rec["id"] = f"seg-{n:06d}"
    return records, funnel


def write_segments(refs: list[str], out: str | Path, filters: Filters, max_segments: int | None = None,
                   seed: int = 0, on_bytes: Callable[[int], None] | None = None,
                   workers: int | None = None) -> Funnel:
    """Stream segments to a JSONL file, written atomically. Without max_segments nothing is held
    in memory but the dedup index."""
    import json

    if max_segments is not None:
        records, funnel = segment(refs, filters.min_chars, filters.max_chars, max_segments, filters, seed, on_bytes,
                                  workers)
        stream: Iterator[dict] = iter(records)
    else:
        funnel = Funnel()
        stream = ({**rec, "id": f"seg-{n:06d}"}
                  for n, rec in enumerate(iter_segments(refs, filters, funnel, on_bytes, workers)))
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in stream:
            fh.write(json.dumps({"id": rec["id"], **{k: v for k, v in rec.items() if k != "id"}},
                                ensure_ascii=False) + "\n")
    return funnel


def run(refs: list[str], out: Path, filters: Filters, max_segments: int | None = None, seed: int = 0,
        workers: int | None = None, progress=None, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The corpus stage: segment `refs` into `out`; an error (and no file) when nothing is left."""
    from . import ui

    with (progress or ui.progress)("segment (bytes)", input_bytes(refs)) as advance:
        funnel = write_segments(refs, out, filters, max_segments, seed, on_bytes=advance, workers=workers)
    for w in funnel.warnings:
        (warn or ui.info)(f"[yellow]warning:[/] {w}")
    kept = funnel.counts["sampled"] or funnel.counts["kept"]
    if not kept:
        Path(out).unlink(missing_ok=True)
        raise CorpusError(f"no segments of {filters.min_chars}-{filters.max_chars} characters in {', '.join(refs)}")
    extracted = funnel.counts["chars_extracted"]
    # text_yield: the share of the extracted text that reached the segments (before any max_segments sample)
    return CorpusCounts(segments=kept, funnel=dict(funnel.counts),
                        text_yield=round(funnel.counts["chars_kept"] / extracted, 3) if extracted else None)
