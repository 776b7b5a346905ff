from humpback_lite.corpus import pack, segment


def test_pydoc_segments_respect_the_length_window_and_are_unique():
    records, funnel = segment(["pydoc:topics"], 600, 1500)
    assert len(records) > 100
    assert all(600 <= len(r["text"]) <= 1500 for r in records)
    assert len({r["text"] for r in records}) == len(records)
    assert all(r["source"].startswith("pydoc:topics/") for r in records)
    assert funnel.counts["kept"] == len(records)


def test_pack_joins_paragraphs_and_splits_long_ones():
    text = "\n\n".join([f"Short paragraph number {i} with some words." for i in range(40)])
    segs, _ = pack(text, 200, 400)
    assert segs and all(200 <= len(s) <= 400 for s in segs)
    long_par = " ".join(["This sentence is here to make a very long paragraph."] * 30)
    segs, _ = pack(long_par, 100, 300)
    assert all(len(s) <= 300 for s in segs) and len(segs) >= 4


def test_duplicates_and_repetitive_menus_are_dropped(tmp_path):
    body = "Python lists are ordered, mutable sequences of items. " * 8
    (tmp_path / "a.txt").write_text(body)
    (tmp_path / "b.txt").write_text(body.upper().lower())  # same text after normalisation
    (tmp_path / "menu.md").write_text("\n".join(["Home", "About", "Contact", "Home", "About", "Contact"] * 10))
    records, funnel = segment([str(tmp_path)], 100, 1000)
    assert len(records) == 1
    assert funnel.counts["dropped_duplicate"] == 1
    assert funnel.counts["dropped_repetitive"] == 1


def test_binary_and_malformed_inputs_are_skipped_with_a_warning(tmp_path):
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02" * 100)
    (tmp_path / "rows.jsonl").write_text('{"text": "%s"}\nnot json\n{"nope": 1}\n' % ("word " * 60))
    records, funnel = segment([str(tmp_path)], 100, 1000)
    assert len(records) == 1
    assert funnel.counts["malformed_lines"] == 2
    assert any("blob.txt: binary file" in w for w in funnel.warnings)
    assert any("rows.jsonl:2" in w for w in funnel.warnings)


def test_max_segments_samples_across_the_whole_corpus():
    records, funnel = segment(["pydoc:topics"], 600, 1500, max_segments=10)
    assert len(records) == 10
    assert len({r["source"] for r in records}) >= 8  # not just the first topic
    assert [r["id"] for r in records] == [f"seg-{i:06d}" for i in range(10)]
