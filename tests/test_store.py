import json
from pathlib import Path

import pytest

from humpback_lite.store import (
    DataError,
    JsonlAppender,
    Run,
    atomic_path,
    claim_output,
    inputs_path,
    read_jsonl,
    remove_stale_temps_of,
    unique_ids,
    write_json,
)


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


def test_a_stage_folder_the_manifest_does_not_know_is_refused_not_deleted(tmp_path):
    # `humpback run --out proj` into a folder whose corpus/ holds the user's own files
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "mine.txt").write_text("keep me")
    run = Run(tmp_path)
    with pytest.raises(DataError, match="not a stage of this run"):
        run.begin("corpus", "fp")
    assert (tmp_path / "corpus" / "mine.txt").read_text() == "keep me"
    # an empty folder (a kill between mkdir and the manifest) is simply used
    (tmp_path / "augment").mkdir()
    assert run.begin("augment", "fp") == tmp_path / "augment"


def test_atomic_dir_replaces_only_a_folder_of_its_own_files(tmp_path):
    from humpback_lite.store import atomic_dir

    out = tmp_path / "adapter"
    for _ in range(2):  # a rerun replaces what the first run wrote
        with atomic_dir(out, owned={"a.json", "a.gguf"}) as tmp:
            (tmp / "a.json").write_text("{}")
        (out / "a.gguf").write_text("written later, also ours")
    assert sorted(p.name for p in out.iterdir()) == ["a.gguf", "a.json"]
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(DataError, match="notes.txt"):
        with atomic_dir(out, owned={"a.json", "a.gguf"}) as tmp:
            (tmp / "a.json").write_text("{}")
    assert (out / "notes.txt").read_text() == "the user's" and (out / "a.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temp folder left behind


def test_a_stand_alone_output_resumes_only_from_the_same_inputs(tmp_path):
    out = tmp_path / "pairs.jsonl"
    claim_output(out, {"segments": "d1", "augment": {"temperature": 0.7}}, "augment")
    out.write_text('{"id": "a"}\n')
    claim_output(out, {"segments": "d1", "augment": {"temperature": 0.7}}, "augment")  # the same: resume
    with pytest.raises(DataError, match=r"other inputs \(augment, segments differ\); nothing was changed"):
        claim_output(out, {"segments": "d2", "augment": {"temperature": 0.2}}, "augment")
    assert out.read_text() == '{"id": "a"}\n'
    mine = tmp_path / "notes.jsonl"
    mine.write_text("my own file\n")
    with pytest.raises(DataError, match="was not written by `humpback score`"):
        claim_output(mine, {"pairs": "d"}, "score")
    assert mine.read_text() == "my own file\n" and not inputs_path(mine).exists()


def test_repeated_ids_name_both_records(tmp_path):
    with pytest.raises(DataError, match=r"p.jsonl: record 3 repeats the id 'x' of record 1"):
        unique_ids([{"id": "x"}, {"id": "y"}, {"id": "x"}], tmp_path / "p.jsonl")


def test_a_copy_that_fails_midway_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    import shutil

    from humpback_lite.store import copy_file, copy_tree

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"new a")
    (src / "sub" / "b.bin").write_bytes(b"new b")
    dst = tmp_path / "dst"
    copy_tree(src, dst)
    assert (dst / "sub" / "b.bin").read_bytes() == b"new b"
    (src / "a.bin").write_bytes(b"newer a")

    def full_disk(a, b):
        Path(b).write_bytes(b"ne")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    with pytest.raises(OSError):
        copy_file(src / "a.bin", dst / "a.bin")
    assert (dst / "a.bin").read_bytes() == b"new a"
    assert sorted(p.name for p in dst.iterdir()) == ["a.bin", "sub"]


def test_a_resumed_stage_loses_what_killed_atomic_writes_left_and_keeps_its_records(tmp_path):
    run = Run(tmp_path)
    d = run.begin("round_01/train", "fp")
    (d / "data.jsonl").write_text('{"id": 1}\n')
    (d / ".adapter.gguf.5s_cfk33.tmp").write_text("half")  # atomic_path's temp, killed before the rename
    (d / ".adapter.x1y2z3w4").mkdir()  # atomic_dir's
    (d / ".trainer").mkdir()  # a dot-folder of another name is no temp
    run.begin("round_01/train", "fp")  # the rerun after the kill
    assert sorted(p.name for p in d.iterdir()) == [".trainer", "data.jsonl"]


def test_a_rerun_command_removes_only_its_own_targets_temps_from_the_users_folder(tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (tmp_path / ".adapter.k3j_x9q2").mkdir()  # atomic_dir's, or a DDP launch's job folder
    (out / ".adapter.gguf.5s_cfk33.gguf").write_text("half")  # the converter's atomic_path temp
    kept = [tmp_path / ".adapterx.k3j_x9q2", tmp_path / ".adapter", tmp_path / ".adapter.notatemp-name",
            tmp_path / ".config"]
    for p in kept:
        p.write_text("the user's")
    assert remove_stale_temps_of(out) == 1
    assert remove_stale_temps_of(out / "adapter.gguf") == 1
    assert remove_stale_temps_of(tmp_path / "missing" / "x") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in kept] + ["adapter"])
    assert not list(out.iterdir())
