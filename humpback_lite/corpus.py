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
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from .layout import CorpusCounts
from .progress import Progress, Say, quiet, silent
from .readers import CorpusError, Document, Funnel, documents, html_sections, input_bytes  # noqa: F401
from .recipe import CorpusFilters
from .store import atomic_path, dumps

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


# The settings are described once, in the recipe (`data` section); `humpback segment` and the stage
# take the same dataclass.
Filters = CorpusFilters


# ----------------------------------------------------------------------------- per document


def strip_boilerplate(text: str, funnel: Funnel) -> str:
    out = []
    for line in text.splitlines():
        if len(line) < 100 and _BOILERPLATE.match(line.strip()):
            funnel.counts["boilerplate_lines"] += 1
            continue
        out.append(line)
    return "\n".join(out)


def is_man_page(headings: Iterable[str | None]) -> bool:
    """A manual page (man2html, groff -Thtml): its sections are all-caps by convention (man-pages(7)),
    NAME first, then SYNOPSIS and DESCRIPTION (a short SYNOPSIS may not survive extraction). The
    paper's all-caps rule is meant for the shouted banners of web pages ("SUBSCRIBE") and would drop
    every section of one."""
    names = {(h or "").strip() for h in headings}
    return "NAME" in names and bool(names & {"SYNOPSIS", "DESCRIPTION"})


def bad_heading(heading: str | None, allcaps: bool = False) -> str | None:
    """Why a heading disqualifies its section (paper: empty, all-caps, navigation-like), or None.
    `allcaps`: all-caps headings are the document's convention (a man page), not a reason."""
    if heading is None:
        return None  # the format has no headings
    h = heading.strip().strip(":").strip()
    if not h:
        return "empty_heading"
    letters = [c for c in h if c.isalpha()]
    if len(letters) >= 4 and all(c.isupper() for c in letters) and not allcaps:
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


def pack(text: str, min_chars: int, max_chars: int) -> tuple[list[str], list[str]]:
    """Pack paragraphs greedily into segments of at most max_chars; keep those >= min_chars.
    Returns (segments, the too-short pieces dropped)."""
    blocks: list[str] = []
    for par in paragraphs(text):
        blocks.extend(_split_long(par, max_chars) if len(par) > max_chars else [par])
    segments: list[str] = []
    short: list[str] = []
    cur = ""
    for block in blocks:
        if cur and len(cur) + 2 + len(block) > max_chars:
            (segments if len(cur) >= min_chars else short).append(cur)
            cur = block
        else:
            cur = f"{cur}\n\n{block}" if cur else block
    if cur:
        (segments if len(cur) >= min_chars else short).append(cur)
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


# What each funnel count means, and the setting (recipe key / `humpback segment` flag) that keeps it.
DROPS = {
    "dropped_empty_heading": ("sections under an empty heading", "data.headers=false / --keep-headers"),
    "dropped_allcaps_heading": ("sections under an all-caps heading", "data.headers=false / --keep-headers"),
    "dropped_navigation_heading": ("sections under a navigation heading", "data.headers=false / --keep-headers"),
    "dropped_too_short": ("pieces shorter than min_chars", "a lower data.min_chars / --min-chars"),
    "dropped_repetitive": ("repetitive segments", "data.repetition=0 / --repetition 0"),
    "dropped_language": ("segments not in English", "data.language=null (no --language)"),
    "dropped_duplicate": ("exact duplicates", "data.dedup=none / --dedup none"),
    "dropped_near_duplicate": ("near duplicates", "data.dedup=none / --dedup none"),
}


def explain_empty(counts: Counter | dict) -> str:
    """For the error when nothing is kept: what the inputs held and which filter dropped what, the
    biggest first, each with the setting that would keep it."""
    if not counts.get("documents"):
        return ": no readable document was found (check the paths, data.include / data.exclude, and the warnings above)"
    drops = sorted(((counts.get(f"chars_{k}", 0), n, k) for k, n in counts.items() if k in DROPS and n), reverse=True)
    lines = [f"\n  {n} {DROPS[k][0]}, {chars:,} characters (keep them: {DROPS[k][1]})" for chars, n, k in drops]
    return (f": {counts['documents']} documents, {counts.get('chars_extracted', 0):,} characters of text; dropped:"
            + "".join(lines)) if lines else f": {counts['documents']} documents and no text in them"


def process_document(doc: Document, f: Filters) -> tuple[list[tuple[str, str | None]], Counter]:
    """Everything that needs only one document: HTML extraction, heading rule, boilerplate, packing,
    repetition and language. Runs in worker processes; dedup stays in the parent."""
    counts: Counter = Counter()
    docs = list(html_sections(doc.text, doc.source, doc.offset)) if doc.kind == "html" else [doc]
    counts["documents"] += len(docs) if doc.kind == "html" else 1
    man = is_man_page(d.heading for d in docs)
    out = []
    for d in docs:
        counts["chars_extracted"] += len(d.text)
        if f.headers and (why := bad_heading(d.heading, allcaps=man)):
            counts[f"dropped_{why}"] += 1
            counts[f"chars_dropped_{why}"] += len(d.text)
            continue
        funnel = Funnel(counts=counts)
        text = strip_boilerplate(d.text, funnel) if f.boilerplate else d.text
        segs, short = pack(text, f.min_chars, f.max_chars)
        counts["dropped_too_short"] += len(short)
        counts["chars_dropped_too_short"] += sum(map(len, short))
        for seg in segs:
            counts["candidates"] += 1
            if f.repetition and repetition(seg) > f.repetition:
                counts["dropped_repetitive"] += 1
                counts["chars_dropped_repetitive"] += len(seg)
            elif f.language == "en" and not looks_english(seg):
                counts["dropped_language"] += 1
                counts["chars_dropped_language"] += len(seg)
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
                            funnel.counts["chars_dropped_duplicate"] += len(text)
                            continue
                        exact.add(h)
                        if near is not None and near.seen(text):
                            funnel.counts["dropped_near_duplicate"] += 1
                            funnel.counts["chars_dropped_near_duplicate"] += len(text)
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
            fh.write(dumps({"id": rec["id"], **{k: v for k, v in rec.items() if k != "id"}}) + "\n")
    return funnel


def run(refs: list[str], out: Path, filters: Filters, max_segments: int | None = None, seed: int = 0,
        workers: int | None = None, progress: Progress = silent, warn: Say = quiet) -> dict[str, Any]:
    """The corpus stage: segment `refs` into `out`; an error (and no file) when nothing is left."""
    if max_segments is not None and max_segments < 1:
        raise CorpusError(f"max_segments: must be >= 1 (got {max_segments})")
    with progress("segment (bytes)", input_bytes(refs)) as advance:
        funnel = write_segments(refs, out, filters, max_segments, seed, on_bytes=advance, workers=workers)
    for w in funnel.warnings:
        warn(f"warning: {w}")
    kept = funnel.counts["sampled"] or funnel.counts["kept"]
    if not kept:
        Path(out).unlink(missing_ok=True)
        raise CorpusError(f"no segments of {filters.min_chars}-{filters.max_chars} characters in {', '.join(refs)}"
                          + explain_empty(funnel.counts))
    extracted = funnel.counts["chars_extracted"]
    # text_yield: the share of the extracted text that reached the segments (before any max_segments sample)
    return CorpusCounts(segments=kept, funnel=dict(funnel.counts),
                        text_yield=round(funnel.counts["chars_kept"] / extracted, 3) if extracted else None)
