"""HTML from the documentation generators users' manuals come from reaches segments, with its real
headings, at the default settings. tests/data/docgen holds one short manual rendered by each
generator (make_samples.py regenerates them; publican.html is written after Publican's output)."""

from __future__ import annotations

from pathlib import Path

import pytest

from humpback_lite import corpus
from humpback_lite.corpus import Filters
from humpback_lite.readers import visible_heading
from humpback_lite.store import read_jsonl

SAMPLES = Path(__file__).parent / "data" / "docgen"
PAGES = sorted(p.name for p in SAMPLES.glob("*.html"))
# (heading, first words of its section) as the manual has them; a man page names its sections its way
SECTIONS = [("Installing tidepool", "Tidepool is a small program"), ("Configuration files", "Each pair of folders"),
            ("Synchronising folders", "A synchronisation compares"), ("Resolving conflicts", "A conflict happens")]
MAN = [("DESCRIPTION", "Tidepool is a small program"), ("FILES", "Each pair of folders"),
       ("CONFLICTS", "A conflict happens")]


def test_every_generator_has_a_sample():
    assert {p.removesuffix(".html") for p in PAGES} >= {
        "sphinx", "mkdocs-material", "pandoc", "texinfo", "doxygen", "javadoc", "docbook-xsl", "publican",
        "groff-man", "man2html", "handwritten"}


@pytest.mark.parametrize("page", PAGES)
def test_a_generators_manual_reaches_segments_under_its_own_headings(page, tmp_path):
    out = tmp_path / "segments.jsonl"
    counts = corpus.run([str(SAMPLES / page)], out, Filters())  # the default settings
    rows = read_jsonl(out)
    want = MAN if "man" in page else SECTIONS
    for heading, first in want:  # a numbered heading ("6.1.4. Resolving conflicts") keeps its number
        assert any((r["heading"] == heading or r["heading"].endswith(" " + heading)) and r["text"].startswith(first)
                   for r in rows), (heading, [r["heading"] for r in rows])
    assert all(r["heading"] for r in rows)  # every segment keeps its heading
    # most of the text the page holds reaches the segments (the rest: titles, synopsis, navigation)
    assert counts.text_yield >= 0.75, (counts.text_yield, counts.funnel)


def test_a_headings_text_is_what_a_reader_sees():
    assert visible_heading("Installing tidepool¶") == "Installing tidepool"
    assert visible_heading(" 6.1.2.  Repositories for\n Stable Users ") == "6.1.2. Repositories for Stable Users"
    assert visible_heading("§ Options #") == "Options" and visible_heading("Learning C#") == "Learning C#"
