"""Corpus ingestion on fixtures the tests build themselves: an HTML site with navigation and footers,
WARC and WET written with warcio, parquet, JSONL, CSV, Markdown, compressed copies, and broken files."""

import bz2
import gzip
import io
import json
import lzma

import pytest
from click.testing import CliRunner

from humpback_lite.cli import main
from humpback_lite.corpus import Filters, bad_heading, pack, repetition, segment
from humpback_lite.store import read_jsonl

LISTS = ("Python lists are ordered collections that can grow and shrink. You create one with square "
         "brackets and commas between the items. Lists keep the order in which items were added, and any "
         "item can be reached by its position, starting from zero for the first one. ")
SLICING = ("Slicing takes a part of a list and returns it as a new list. The slice a[1:3] holds the items "
           "at positions one and two. Leaving out the start means from the beginning, and leaving out the "
           "end means up to the last item. Negative numbers count from the end of the list. ")
TUPLES = ("A tuple is like a list that cannot be changed after it is made. Tuples are written with "
          "parentheses, and they are often used for fixed groups of values such as coordinates. Because "
          "they never change, tuples can serve as dictionary keys, which lists cannot. ")

PAGE = f"""<!doctype html><html><head><title>Lists</title></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/about">About</a></li><li><a href="/blog">Blog</a></li></ul></nav>
<main><article>
<h1>Python lists</h1><p>{LISTS}</p><p>Accept all cookies</p>
<h2>Slicing</h2><p>{SLICING}</p>
<h2>RELATED POSTS</h2><p>{TUPLES}</p>
</article></main>
<footer><p>Copyright 2024 Example. All rights reserved.</p><p>Share this: Twitter Facebook</p></footer>
</body></html>"""


def f(**kw):
    return Filters(**{"min_chars": 200, "max_chars": 1000, **kw})


def _texts(records):
    return [r["text"] for r in records]


def test_hand_checked_page_gives_exactly_its_two_sections(tmp_path):
    (tmp_path / "page.html").write_text(PAGE)
    records, funnel = segment([str(tmp_path / "page.html")], 200, 1000, filters=f())
    assert _texts(records) == [LISTS.strip(), SLICING.strip()]
    assert [r["heading"] for r in records] == ["Python lists", "Slicing"]
    assert all(r["provenance"].endswith("page.html") for r in records)
    assert funnel.counts["dropped_allcaps_heading"] == 1  # "RELATED POSTS"
    assert funnel.counts["boilerplate_lines"] >= 1  # "Accept all cookies"
    joined = " ".join(_texts(records))
    for junk in ("Home", "About", "Copyright", "Share this", "cookies"):
        assert junk not in joined


def _warc(path, pages, gz=True):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as out:
        w = WARCWriter(out, gzip=gz)
        for url, body, ctype in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body.encode()), http_headers=http))


def test_warc_reads_html_responses_only_with_url_provenance(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    _warc(path, [("http://a.example/lists", PAGE, "text/html; charset=utf-8"),
                 ("http://a.example/data.json", '{"x": 1}', "application/json")])
    records, funnel = segment([str(path)], 200, 1000, filters=f())
    assert _texts(records) == [LISTS.strip(), SLICING.strip()]
    assert {r["provenance"] for r in records} == {"http://a.example/lists"}
    assert all(r["offset"].startswith("<urn:uuid:") for r in records)
    assert funnel.counts["records"] == 1 and funnel.counts["records_not_html"] == 1


def test_wet_conversion_records_are_plain_text(tmp_path):
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "crawl.wet.gz"
    with open(path, "wb") as out:
        w = WARCWriter(out, gzip=True)
        w.write_record(w.create_warc_record("http://b.example/t", "conversion",
                                            payload=io.BytesIO((TUPLES + LISTS).encode()),
                                            warc_headers_dict={"Content-Type": "text/plain"}))
    records, _ = segment([str(path)], 200, 1000, filters=f())
    assert len(records) == 1 and records[0]["provenance"] == "http://b.example/t"


def test_tables_markdown_and_every_compression(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    def unique(tag):  # each file gets its own text, so dedup keeps one segment per file
        return f"This copy was written for the {tag} file of the test. " + LISTS

    pq.write_table(pa.table({"body": [unique("parquet")], "n": [1]}), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("title,body\nx,\"" + unique("csv") + "\"\n")
    md = f"# Lists\n\n{unique('markdown')}\n"
    (tmp_path / "notes.md.gz").write_bytes(gzip.compress(md.encode()))
    (tmp_path / "notes2.md.bz2").write_bytes(bz2.compress((md + "\n## Copy\n\n" + unique("markdown")).encode()))
    (tmp_path / "rows.jsonl.xz").write_bytes(lzma.compress(json.dumps({"body": unique("jsonl")}).encode()))
    page = PAGE.replace(LISTS, unique("html"))
    (tmp_path / "page.html.zst").write_bytes(zstandard.ZstdCompressor().compress(page.encode()))
    records, funnel = segment([str(tmp_path)], 200, 1000, filters=f(text_field="body", dedup="exact"))
    by_file = {}
    for r in records:
        by_file.setdefault(r["provenance"].split("/")[-1], []).append(r)
    assert set(by_file) == {"t.parquet", "t.csv", "notes.md.gz", "rows.jsonl.xz", "page.html.zst"}
    assert by_file["notes.md.gz"][0]["heading"] == "Lists"
    assert funnel.counts["dropped_duplicate"] == 2  # notes2.md.bz2 only repeats notes.md.gz, twice
    assert not funnel.warnings


def test_near_duplicates_are_dropped_by_minhash(tmp_path):
    base = LISTS + SLICING
    (tmp_path / "a.txt").write_text(base)
    (tmp_path / "b.txt").write_text(base.replace("grow and shrink", "grow or shrink"))  # one word changed
    (tmp_path / "c.txt").write_text(TUPLES + SLICING)
    exact, _ = segment([str(tmp_path)], 200, 1000, filters=f(dedup="exact"))
    near, funnel = segment([str(tmp_path)], 200, 1000, filters=f(dedup="minhash"))
    assert len(exact) == 3 and len(near) == 2
    assert funnel.counts["dropped_near_duplicate"] == 1


def test_bad_files_are_reported_and_skipped(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text(LISTS + SLICING)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02\xff" * 500)
    (tmp_path / "latin1.txt").write_bytes((TUPLES + SLICING).encode("latin-1").replace(b"A tuple", b"A tupl\xe9"))
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress((TUPLES + LISTS).encode() * 20)[:300])
    _warc(tmp_path / "cut.warc.gz", [("http://c.example/", PAGE, "text/html")] * 3)
    data = (tmp_path / "cut.warc.gz").read_bytes()
    (tmp_path / "cut.warc.gz").write_bytes(data[: len(data) - 200])
    (tmp_path / "long.txt").write_text("word " * 300_000)  # one 1.5 MB line
    records, funnel = segment([str(tmp_path)], 200, 1000, filters=f())
    sources = {r["provenance"].split("/")[-1] for r in records}
    assert {"good.txt", "latin1.txt"} <= sources
    assert funnel.counts["skipped_empty"] == 1 and funnel.counts["skipped_binary"] == 1
    assert funnel.counts["skipped_truncated"] >= 1
    assert funnel.counts["lines_truncated"] == 1 and funnel.counts["invalid_utf8_lines"] >= 1
    warnings = "\n".join(funnel.warnings)
    for name in ("empty.txt", "blob.txt", "cut.txt.gz"):
        assert name in warnings
    assert all(len(r["text"]) <= 1000 for r in records)


def test_segment_command_prints_funnel_and_fails_clearly_on_nothing(tmp_path):
    (tmp_path / "page.html").write_text(PAGE)
    out = tmp_path / "segments.jsonl"
    res = CliRunner().invoke(main, ["segment", str(tmp_path / "page.html"), "-o", str(out), "--min-chars", "200"])
    assert res.exit_code == 0, res.output
    assert "corpus funnel" in res.output and "dropped_allcaps_heading" in res.output and "of the extracted text" in res.output
    rows = read_jsonl(out, required=("text", "provenance"))
    assert [r["heading"] for r in rows] == ["Python lists", "Slicing"]
    (tmp_path / "tiny.txt").write_text("too short")
    res = CliRunner().invoke(main, ["segment", str(tmp_path / "tiny.txt"), "-o", str(tmp_path / "none.jsonl")])
    assert res.exit_code == 1 and "no segments of 600-3000 characters" in res.output
    assert "1 pieces shorter than min_chars, 9 characters (keep them: a lower data.min_chars / --min-chars)" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "none.jsonl").exists()



def test_pydoc_segments_respect_the_length_window_and_are_unique():
    records, funnel = segment(["pydoc:topics"], 600, 1500)
    assert len(records) > 100
    assert all(600 <= len(r["text"]) <= 1500 for r in records)
    assert len({r["text"] for r in records}) == len(records)
    assert all(r["provenance"].startswith("pydoc:topics/") for r in records)
    assert funnel.counts["kept"] == len(records)


def test_pack_joins_paragraphs_and_splits_long_ones():
    text = "\n\n".join([f"Short paragraph number {i} with some words." for i in range(40)])
    segs, _ = pack(text, 200, 400)
    assert segs and all(200 <= len(s) <= 400 for s in segs)
    long_par = " ".join(["This sentence is here to make a very long paragraph."] * 30)
    segs, _ = pack(long_par, 100, 300)
    assert all(len(s) <= 300 for s in segs) and len(segs) >= 4


@pytest.mark.parametrize("heading,why", [("", "empty_heading"), ("SHARE THIS STORY", "allcaps_heading"),
                                         ("Related posts", "navigation_heading"), ("Slicing lists", None),
                                         (None, None), ("FAQ", None)])
def test_heading_rules(heading, why):
    assert bad_heading(heading) == why


def test_repetition_score_separates_menus_from_prose():
    assert repetition("Home. About. Contact. Home. About. Contact.") == 1.0
    assert repetition(LISTS + SLICING) < 0.1


def test_max_segments_is_a_seeded_sample_across_the_whole_corpus():
    a, funnel = segment(["pydoc:topics"], 600, 1500, max_segments=10)
    b, _ = segment(["pydoc:topics"], 600, 1500, max_segments=10)
    assert _texts(a) == _texts(b) and len(a) == 10
    assert len({r["provenance"] for r in a}) >= 8  # not just the first topic
    assert [r["id"] for r in a] == [f"seg-{i:06d}" for i in range(10)]
    assert funnel.counts["sampled"] == 10


def test_worker_processes_give_the_same_segments_in_the_same_order(tmp_path):
    for i in range(12):
        (tmp_path / f"p{i:02d}.html").write_text(PAGE.replace("Python lists", f"Python lists, part {i}")
                                                 .replace(LISTS, f"Part {i} of the guide. " + LISTS))
    serial, f1 = segment([str(tmp_path)], 200, 1000, filters=f(dedup="exact"), workers=1)
    parallel, f2 = segment([str(tmp_path)], 200, 1000, filters=f(dedup="exact"), workers=2)
    assert _texts(serial) == _texts(parallel) and len(serial) >= 12
    assert f1.counts == f2.counts


def test_hash_lines_inside_code_blocks_are_not_headings():
    from humpback_lite.readers import markdown_sections

    md = "# Rebasing\n\nIntro text.\n\n```\n# a shell comment\ngit rebase -i\n```\n\nMore text.\n\n## Next\n\nBody."
    assert [d.heading for d in markdown_sections(md, "x.md")] == ["Rebasing", "Next"]


MANUAL = """<html><head><title>Configuring repositories</title></head><body>
<div class="navheader"><a href="index.html">Home</a> | <a href="next.html">Next</a></div>
<div class="section"><h3 class="title">3.1. Adding a repository</h3>
<p>Repositories are listed in files under the sources directory. Each line names a type, a URL, a suite
and the components to use. The package manager reads every file there when it updates its lists.</p>
<div class="example"><p class="title"><b>Example 3.1. A repository file</b></p>
<pre class="programlisting"># Base repository
deb http://deb.example.org/debian stable main
# Security updates
deb http://security.example.org stable-security main
</pre></div>
<p>After saving the file, run the update command. The new packages then appear in searches and can be
installed like any other package; their signatures are checked with the keys the system trusts.</p>
</div>
<div class="section"><h3 class="title">3.2. Pinning</h3>
<p>Pinning gives packages from one repository priority over another. A preferences file assigns a
priority to a release or origin, and the package manager installs the candidate with the highest one.</p>
</div></body></html>"""


def test_html_headings_come_from_the_page_so_code_comments_stay_in_their_section(tmp_path):
    from humpback_lite.readers import html_sections

    docs = list(html_sections(MANUAL, "manual.html"))
    assert [d.heading for d in docs] == ["3.1. Adding a repository", "3.2. Pinning"]
    assert "# Security updates" in docs[0].text and "After saving the file" in docs[0].text
    (tmp_path / "manual.html").write_text(MANUAL)
    records, funnel = segment([str(tmp_path)], 150, 1000, filters=f(min_chars=150))
    assert [r["heading"] for r in records] == ["3.1. Adding a repository", "3.2. Pinning"]
    assert funnel.counts["chars_kept"] / funnel.counts["chars_extracted"] > 0.9


def test_text_before_the_first_heading_takes_the_page_title():
    from humpback_lite.readers import html_sections

    page = f"<html><head><title>Lists in Python</title></head><body><p>{LISTS}</p></body></html>"
    assert [d.heading for d in html_sections(page, "p.html")] == ["Lists in Python"]
