import json

import pytest

from humpback_lite.seed import load_seed
from humpback_lite.store import DataError


def test_bundled_seed_has_150_pairs_and_30_held_out_never_trained_on():
    train, held = load_seed("builtin:seed", 30)
    assert len(train) == 120 and len(held) == 30
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    assert all(r["split"] == "heldout" for r in held)
    words = [len(r["output"].split()) for r in train + held]
    assert min(words) >= 40 and max(words) <= 250
    assert len({r["category"] for r in train}) >= 7


def test_unmarked_seed_holds_out_its_last_rows(tmp_path):
    path = tmp_path / "seed.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(10)))
    train, held = load_seed(str(path), 3, max_seed=5)
    assert [r["instruction"] for r in held] == ["q7", "q8", "q9"]
    assert [r["instruction"] for r in train] == ["q0", "q1", "q2", "q3", "q4"]


def test_seed_too_small_for_heldout_is_a_clear_error(tmp_path):
    path = tmp_path / "seed.jsonl"
    path.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    with pytest.raises(DataError, match="1 seed rows but data.heldout=30"):
        load_seed(str(path), 30)


def test_repeated_seed_ids_are_an_error_not_a_silently_smaller_evaluation(tmp_path):
    path = tmp_path / "seed.jsonl"
    rows = [{"id": "q", "instruction": f"i{i}", "output": f"o{i}"} for i in range(2)]
    rows += [{"instruction": f"j{i}", "output": f"p{i}"} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="record 2 repeats the id 'q' of record 1"):
        load_seed(str(path), heldout=1)
