"""Readers: any text a hobbyist has -> a stream of documents with provenance.

Chosen by extension (after stripping .gz/.bz2/.xz/.zst) or, failing that, by content:
folders (recursive, include/exclude globs), .txt, .md (sections at headings), .jsonl/.json/.csv/
.parquet (a text field), .html/.htm (main content via trafilatura, then sections at headings: the
paper's "text after a heading"), WARC (HTML responses) and WET (warcio), `hf:owner/name[:config]
[:split]` (datasets, streamed) and `pydoc:topics`. Everything streams: no file is read whole,
except one HTML page or one record at a time.

A file that cannot be read is skipped with a counted reason and a one-line warning naming it;
whatever it yielded before the error is kept.
"""

from __future__ import annotations

import bz2
import csv
import fnmatch
import gzip
import io
import json
import lzma
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}
MAX_LINE = 1 << 20  # a longer line is cut here (a 100 MB single line must not be read whole)
MAX_BLOCK = 256 * 1024  # plain text is handed on in blocks of about this many characters
_HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
_MD_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>])")  # trafilatura's Markdown escapes


class CorpusError(ValueError):
    pass


@dataclass
class Document:
    text: str
    source: str  # file path, URL or dataset name
    heading: str | None = None  # None: the format has no headings; "": text before the first heading
    offset: int | str = 0  # byte offset, line number or record id
    kind: str = "text"  # "html": `text` is a raw page, extracted later (in a worker process)


@dataclass
class Funnel:
    """Counts in and out at every step, per reason, plus one warning line per skipped file."""

    counts: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def warn(self, msg: str, reason: str) -> None:
        self.warnings.append(msg)
        self.counts[f"skipped_{reason}"] += 1


def base_suffix(path: Path) -> tuple[str, str | None]:
    """('.warc', 'gzip') for x.warc.gz; ('.html', None) for x.html."""
    suffixes = [s.lower() for s in path.suffixes]
    comp = COMPRESSED.get(suffixes[-1]) if suffixes else None
    if comp:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), comp


class _Counting(io.RawIOBase):
    """Reports bytes read from the file on disk (compressed bytes), for progress."""

    def __init__(self, f: BinaryIO, on_bytes: Callable[[int], None] | None):
        self.f, self.on_bytes = f, on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        if n and self.on_bytes:
            self.on_bytes(n)
        return n or 0

    def close(self) -> None:
        self.f.close()
        super().close()


def open_bytes(path: Path, on_bytes: Callable[[int], None] | None = None) -> BinaryIO:
    raw = io.BufferedReader(_Counting(open(path, "rb", buffering=0), on_bytes), buffer_size=1 << 16)
    magic = raw.peek(6)[:6]
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw)
    if magic[:3] == b"BZh":
        return bz2.BZ2File(raw)
    if magic[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw)
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
    return raw


def _text_stream(f: BinaryIO) -> io.TextIOWrapper:
    return io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline=None)


# ----------------------------------------------------------------------------- formats


def text_blocks(f: BinaryIO, source: str, funnel: Funnel) -> Iterator[Document]:
    """Plain text in blocks of whole paragraphs (~MAX_BLOCK chars), each with its line number."""
    t = _text_stream(f)
    buf: list[str] = []
    size, start, lineno = 0, 1, 0
    while True:
        line = t.readline(MAX_LINE)
        if not line:
            break
        lineno += 1
        if len(line) >= MAX_LINE and not line.endswith("\n"):
            funnel.counts["lines_truncated"] += 1
            while (rest := t.readline(MAX_LINE)) and not rest.endswith("\n"):
                pass  # skip the remainder of an enormous line
            line += "\n"
        if "\ufffd" in line:
            funnel.counts["invalid_utf8_lines"] += 1
        buf.append(line)
        size += len(line)
        if size >= MAX_BLOCK and not line.strip():
            yield Document("".join(buf), source, None, f"line {start}")
            buf, size, start = [], 0, lineno + 1
    if buf:
        yield Document("".join(buf), source, None, f"line {start}")


# Permalink marks documentation generators append to headings (Sphinx and MkDocs "¶", Texinfo's
# copiable link, "#" and "§" elsewhere): a heading's text is what a reader sees without them.
# "#" only apart from the words ("Learning C#" keeps its "#").
_PERMALINK = re.compile(r"^[#¶§🔗]+\s+|^[¶§🔗]+|\s+#+$|\s*[¶§🔗]+$")


def visible_heading(text: str) -> str:
    """A heading's words, whitespace collapsed, without permalink marks at either end."""
    return _PERMALINK.sub("", " ".join(text.split()))


def _norm(text: str) -> str:
    return visible_heading(text).lower()


def markdown_sections(text: str, source: str, offset: int | str = 0, headings: set[str] | None = None,
                      first: str = "") -> Iterator[Document]:
    """One document per heading: the heading and the text that follows it. With `headings` (the
    document's real ones, normalised), a `#` line that is not one of them is text: a comment line
    of a code listing stays in its section. `first` names the text before the first heading."""
    heading, buf = first, []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced  # a "# comment" inside a code block is not a heading
        m = None if fenced else _HEADING.match(line)
        if m and headings is not None and _norm(m.group(2)) not in headings:
            m = None
        if m:
            if any(s.strip() for s in buf):
                yield Document("\n".join(buf).strip(), source, heading, offset)
            heading, buf = visible_heading(m.group(2)), []
        else:
            buf.append(line)
    if any(s.strip() for s in buf):
        yield Document("\n".join(buf).strip(), source, heading, offset)


def html_sections(html: str | bytes, source: str, offset: int | str = 0) -> Iterator[Document]:
    """Main content via trafilatura (drops navigation, footers, comments), as Markdown so the
    headings survive; then the paper's rule: the text after each heading is a candidate.

    Which lines are headings comes from the page's own h1-h6 elements, not from `#` in the
    extracted text: trafilatura writes code listings as plain lines, so a shell comment such as
    `# Base repository` would otherwise cut a section in two. Text before the first heading takes
    the page's <title>."""
    import trafilatura

    md = trafilatura.extract(html, output_format="markdown", include_formatting=True, include_comments=False,
                             include_tables=False, include_links=False, include_images=False, favor_recall=True)
    if not md:
        return
    md = _MD_ESCAPE.sub(r"\1", md)
    tree = _parse(html)
    # None when the page cannot be parsed: then trafilatura's Markdown headings are taken as they are
    headings = {_norm(h.text_content()) for h in tree.iter(*_H)} - {""} if tree is not None else None
    title = " ".join((tree.findtext(".//title") or "").split()) if tree is not None else ""
    kept = {_norm(m.group(2)) for line in md.splitlines() if (m := _HEADING.match(line))} & (headings or set())
    if headings and not kept and tree is not None:
        # trafilatura kept the content but none of the page's headings (it does so on some
        # DocBook pages): cut the page at its own headings, keeping the blocks trafilatura kept.
        yield from _dom_sections(tree, md, source, offset, title)
        return
    yield from markdown_sections(md, source, offset, headings, title)


_H = ("h1", "h2", "h3", "h4", "h5", "h6")
_BLOCKS = {"p", "pre", "li", "dd", "dt", "blockquote", "td"}


# lxml refuses a decoded str that declares its own encoding, which every XHTML page of DocBook
# (xsltproc, Publican) does: the page then had no headings at all, and every section an empty one
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


def _parse(html: str | bytes):
    import lxml.html

    if isinstance(html, str):
        html = _XML_DECLARATION.sub("", html, count=1)
    try:
        return lxml.html.fromstring(html)
    except (ValueError, lxml.etree.ParserError):
        return None


def _leaf_div(el) -> bool:
    """A div that holds text and no other block: DocBook/Publican write paragraphs as
    `<div class="para">`, not `<p>`, and their text would otherwise be lost."""
    return el.tag == "div" and not any(d.tag in _BLOCKS or d.tag in _H or d.tag == "div" for d in el.iterdescendants())


def _dom_sections(tree, md: str, source: str, offset: int | str, title: str) -> Iterator[Document]:
    """Sections of the page cut at its h1-h6, each the blocks (paragraphs, listings, items, leaf
    divs) whose text trafilatura's main-content extraction (`md`) also kept."""
    content, lines = _norm(md), {_norm(line) for line in md.splitlines()}
    heading, buf = title, []
    for el in tree.iter(*_H, *_BLOCKS, "div"):
        if el.tag == "div" and not _leaf_div(el):
            continue
        if el.tag in _H:
            if buf:
                yield Document("\n\n".join(buf), source, heading, offset)
            heading, buf = visible_heading(el.text_content()), []
        elif not any(a.tag in _BLOCKS for a in el.iterancestors()):  # outermost block only
            text = el.text_content().strip("\n") if el.tag == "pre" else " ".join(el.text_content().split())
            norm = _norm(text)
            # a short block ("Next", "Home") is kept only as a whole line of the content: as a
            # substring it would match some word of the text
            if norm and (norm[:200] in content if len(norm) >= 20 else norm in lines):
                buf.append(text)
    if buf:
        yield Document("\n\n".join(buf), source, heading, offset)


def warc_documents(f: BinaryIO, source: str, funnel: Funnel) -> Iterator[Document]:
    """HTML responses of a WARC, or the plain-text conversions of a WET file."""
    from warcio.archiveiterator import ArchiveIterator

    for record in ArchiveIterator(f):
        rtype = record.rec_type
        url = record.rec_headers.get_header("WARC-Target-URI") or source
        rid = record.rec_headers.get_header("WARC-Record-ID") or ""
        if rtype == "conversion":  # WET
            body = record.content_stream().read().decode("utf-8", errors="replace")
            funnel.counts["records"] += 1
            yield Document(body, url, None, rid)
        elif rtype == "response":
            ctype = (record.http_headers.get_header("Content-Type") or "") if record.http_headers else ""
            if "html" not in ctype.lower():
                funnel.counts["records_not_html"] += 1
                continue
            funnel.counts["records"] += 1
            yield Document(record.content_stream().read().decode("utf-8", errors="replace"), url, None, rid, "html")


def table_rows(path: Path, kind: str, f: BinaryIO, text_field: str, funnel: Funnel) -> Iterator[Document]:
    def doc(row: object, where: int | str) -> Document | None:
        value = row.get(text_field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            funnel.counts["rows_without_text_field"] += 1
            if funnel.counts["rows_without_text_field"] <= 3:
                funnel.warnings.append(f"{path}:{where}: no string field {text_field!r}; row skipped")
            return None
        return Document(value, str(path), None, f"row {where}")

    if kind == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        source = path if base_suffix(path)[1] is None else pa_buffer(f)  # parquet needs seeks
        for batch in pq.ParquetFile(source).iter_batches(batch_size=1024, columns=[text_field]):
            for value in batch.column(0).to_pylist():
                n += 1
                if d := doc({text_field: value}, n):
                    yield d
        return
    t = _text_stream(f)
    if kind == ".csv":
        csv.field_size_limit(MAX_LINE)
        for i, row in enumerate(csv.DictReader(t), 2):
            if d := doc(row, i):
                yield d
        return
    first = t.read(1)
    if kind == ".json" and first == "[":  # a JSON array: small files only, json has no streaming parser
        for i, row in enumerate(json.loads(first + t.read()), 1):
            if d := doc(row, i):
                yield d
        return
    lines = iter(lambda: t.readline(MAX_LINE), "")
    for i, line in enumerate(_prepend(first, lines), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            funnel.counts["malformed_lines"] += 1
            if funnel.counts["malformed_lines"] <= 3:
                funnel.warnings.append(f"{path}:{i}: not valid JSON; line skipped")
            continue
        if d := doc(row, i):
            yield d


def pa_buffer(f: BinaryIO):
    """A compressed parquet file must be decompressed into memory: it is read by seeking."""
    import pyarrow as pa

    return pa.BufferReader(f.read())


def _prepend(first: str, lines: Iterator[str]) -> Iterator[str]:
    head = next(lines, "")
    yield first + head
    yield from lines


def hf_documents(ref: str, text_field: str) -> Iterator[Document]:
    """`hf:owner/name[:config][:split]`, streamed with datasets (needs a network)."""
    from datasets import load_dataset

    parts = ref[3:].split(":")
    name, config = parts[0], (parts[1] or None) if len(parts) > 1 else None
    split = parts[2] if len(parts) > 2 else "train"
    for i, row in enumerate(load_dataset(name, config, split=split, streaming=True)):
        value = row.get(text_field)
        if isinstance(value, str):
            yield Document(value, f"hf:{name}", None, f"row {i}")


def pydoc_documents() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document(topics[name], f"pydoc:topics/{name}", None, name)


# ----------------------------------------------------------------------------- dispatch

TEXT_KINDS = {".txt", ".text", ".rst", ".md", ".markdown", ".html", ".htm", ".xhtml", ".warc", ".wet",
              ".arc", ".jsonl", ".ndjson", ".json", ".csv", ".parquet"}


def _sniff(head: bytes) -> str:
    if head.startswith(b"WARC/"):
        return ".warc"
    if b"<html" in head[:2048].lower() or b"<!doctype html" in head[:2048].lower():
        return ".html"
    if head.startswith(b"PAR1"):
        return ".parquet"
    return ".txt"


def file_documents(path: Path, funnel: Funnel, text_field: str = "text",
                   on_bytes: Callable[[int], None] | None = None) -> Iterator[Document]:
    kind, _ = base_suffix(path)
    if path.stat().st_size == 0:
        funnel.warn(f"{path}: empty file; skipped", "empty")
        return
    n = 0
    try:
        with open_bytes(path, on_bytes) as f:
            head = f.peek(4096)[:4096] if hasattr(f, "peek") else b""
            if kind not in TEXT_KINDS:
                kind = _sniff(head)
            if kind in (".txt", ".text", ".rst") and b"\x00" in head:
                funnel.warn(f"{path}: binary data, not text; skipped", "binary")
                return
            if kind in (".warc", ".wet", ".arc"):
                docs = warc_documents(f, str(path), funnel)
            elif kind in (".html", ".htm", ".xhtml"):
                docs = iter([Document(f.read().decode("utf-8", errors="replace"), str(path), None, 0, "html")])
            elif kind in (".md", ".markdown"):
                docs = (d for block in text_blocks(f, str(path), funnel)
                        for d in markdown_sections(block.text, str(path), block.offset))
            elif kind in (".jsonl", ".ndjson", ".json", ".csv", ".parquet"):
                docs = table_rows(path, kind, f, text_field, funnel)
            else:
                docs = text_blocks(f, str(path), funnel)
            for d in docs:
                n += 1
                yield d
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError, UnicodeError) as e:
        what = type(e).__name__
        reason = "truncated" if isinstance(e, EOFError) or "end" in str(e).lower() else "unreadable"
        funnel.warn(f"{path}: {what}: {e}; skipped the rest ({n} documents read before)", reason)
    except Exception as e:  # warcio's ArchiveLoadFailed, pyarrow errors: still one line, never a traceback
        funnel.warn(f"{path}: {type(e).__name__}: {e}; skipped the rest ({n} documents read before)", "unreadable")


def iter_files(root: Path, include: list[str], exclude: list[str]) -> Iterator[Path]:
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(root))
        if include and not any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(p.name, g) for g in include):
            continue
        if any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(p.name, g) for g in exclude):
            continue
        yield p


def documents(ref: str, funnel: Funnel, text_field: str = "text", include: list[str] | None = None,
              exclude: list[str] | None = None, on_bytes: Callable[[int], None] | None = None) -> Iterator[Document]:
    """Every document of one input reference."""
    if ref == "pydoc:topics":
        yield from pydoc_documents()
        return
    if ref.startswith("hf:"):
        yield from hf_documents(ref, text_field)
        return
    path = Path(ref).expanduser()
    if path.is_dir():
        default_include = [f"*{k}" for k in TEXT_KINDS] + [f"*{k}{c}" for k in TEXT_KINDS for c in COMPRESSED]
        for p in iter_files(path, include or default_include, exclude or []):
            yield from file_documents(p, funnel, text_field, on_bytes)
        return
    if not path.exists():
        raise CorpusError(f"{ref}: no such file or directory")
    yield from file_documents(path, funnel, text_field, on_bytes)


def input_bytes(refs: list[str]) -> int | None:
    """Total size on disk of the inputs (for a progress bar), None when unknown (pydoc, hf)."""
    total = 0
    for ref in refs:
        p = Path(ref).expanduser()
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            total += p.stat().st_size
        else:
            return None
    return total
