import json

import pytest

from humpback_lite.store import DataError, JsonlAppender, Run, atomic_path, read_jsonl, write_json


def test_atomic_write_leaves_old_file_and_no_temp_on_error(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_appender_drops_torn_last_line_and_resumes(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "te')  # killed mid-write
    with JsonlAppender(path) as app:
        assert [r["id"] for r in app.done] == [1, 2]
        app.append({"id": 3})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "seed.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"seed.jsonl:2: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"instruction": "a"}\n')
    with pytest.raises(DataError, match=r"seed.jsonl:1: missing or empty field\(s\): output"):
        read_jsonl(path, required=("instruction", "output"))


def test_finished_stage_is_skipped_and_changed_fingerprint_reruns(tmp_path):
    run = Run(tmp_path)
    calls = []

    def work(d):
        calls.append(d)
        (d / "out.txt").write_text("x")
        return {"n": 1}

    assert run.stage("s", "fp1", work) is True
    assert Run(tmp_path).stage("s", "fp1", work) is False  # reloaded manifest: done, skipped
    assert Run(tmp_path).stage("s", "fp2", work) is True
    assert len(calls) == 2
    assert Run(tmp_path).info("s").counts == {"n": 1}


def test_interrupted_stage_keeps_partial_files_for_resume(tmp_path):
    run = Run(tmp_path)
    d = run.begin("aug", "fp")
    (d / "pairs.jsonl").write_text('{"id": "a"}\n')
    # a new process finds it "running" with the same fingerprint: files stay
    run2 = Run(tmp_path)
    assert not run2.is_done("aug", "fp")
    d2 = run2.begin("aug", "fp")
    assert (d2 / "pairs.jsonl").read_text() == '{"id": "a"}\n'
    # with a different fingerprint the partial output is discarded
    d3 = Run(tmp_path).begin("aug", "other")
    assert not (d3 / "pairs.jsonl").exists()


def test_atomic_files_get_normal_permissions(tmp_path):
    import os

    from humpback_lite.store import atomic_dir

    write_json(tmp_path / "a.json", {})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    with atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("1")
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask


def test_tree_digest_rereads_only_changed_files(tmp_path, monkeypatch):
    import humpback_lite.store as store

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("alpha")
    (corpus / "b.txt").write_text("beta")
    cache = tmp_path / "cache.json"
    first = store.tree_digest(corpus, cache)
    reads = []
    real = store.file_digest
    monkeypatch.setattr(store, "file_digest", lambda p, *a: reads.append(p.name) or real(p, *a))
    assert store.tree_digest(corpus, cache) == first and reads == []
    (corpus / "b.txt").write_text("beta, changed")
    assert store.tree_digest(corpus, cache) != first and reads == ["b.txt"]
    cache.write_text("{not json")  # a damaged cache only costs a re-read
    assert store.tree_digest(corpus, cache) == store.tree_digest(corpus)


def test_typed_counts_round_trip_through_the_manifest_keeping_unnamed_figures(tmp_path):
    from humpback_lite.layout import SelectCounts, TrainCounts

    run = Run(tmp_path)
    run.stage("round_01/select", "fp", lambda d: SelectCounts(candidates=10, kept=3, extra={"would_keep": {"4": 2}}))
    stored = Run(tmp_path).info("round_01/select").counts
    assert stored["kept"] == 3 and stored["would_keep"] == {"4": 2}  # flat JSON, as `status` shows it
    back = SelectCounts.of(stored)
    assert (back.candidates, back.kept, back.extra) == (10, 3, {"would_keep": {"4": 2}})
    # An older manifest without a figure reads as its default, not a KeyError.
    assert TrainCounts.of({"rows": 5}).train_loss is None and TrainCounts.of(None).rows == 0
