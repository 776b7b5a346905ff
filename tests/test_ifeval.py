"""IFEval: the shipped prompts, the subset, lm-eval's checkers on hand-written answers with known
verdicts, the figures with their intervals, and no network at evaluation time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from humpback_lite import ifeval
from humpback_lite.recipe import RecipeError, from_dict
from humpback_lite.store import file_digest


def _row(key: int, kinds: list[str], kwargs: list[dict], prompt: str = "Write something.") -> dict:
    return {"key": key, "prompt": prompt, "instruction_id_list": kinds, "kwargs": kwargs}


NO_COMMA = _row(1, ["punctuation:no_comma"], [{}])
LOWER = _row(2, ["change_case:english_lowercase"], [{}])
# fewer than 3 sentences: Punkt's English tables know "Dr." ends no sentence (a bare split would count 3)
SHORT = _row(3, ["length_constraints:number_sentences"], [{"relation": "less than", "num_sentences": 3}])
BOTH = _row(4, ["punctuation:no_comma", "change_case:english_lowercase"], [{}, {}])


def test_the_shipped_prompts_are_the_original_541():
    from importlib.resources import files

    path = files("humpback_lite").joinpath("data/ifeval.jsonl")
    assert file_digest(path) == ifeval.PROMPTS_SHA256
    rows = ifeval.load_prompts()
    assert len(rows) == 541 and sum(len(r["instruction_id_list"]) for r in rows) == 834
    assert all(len(r["instruction_id_list"]) == len(r["kwargs"]) for r in rows)


def test_a_subset_keeps_every_instruction_type_in_file_order_and_is_seeded():
    rows = ifeval.load_prompts()
    kinds = {k for r in rows for k in r["instruction_id_list"]}
    sub = ifeval.choose(rows, 120, seed=0)
    assert len(sub) == 120 and {k for r in sub for k in r["instruction_id_list"]} == kinds == set(
        Counter(k for r in rows for k in r["instruction_id_list"]))
    position = {r["key"]: i for i, r in enumerate(rows)}
    assert [position[r["key"]] for r in sub] == sorted(position[r["key"]] for r in sub)
    assert sub == ifeval.choose(rows, 120, seed=0) and sub != ifeval.choose(rows, 120, seed=1)
    assert ifeval.choose(rows, "all") == rows and ifeval.choose(rows, 1000) == rows
    assert len(ifeval.choose(rows, 10)) == 10  # fewer than the types: as many as asked


def test_the_ifeval_setting_takes_a_count_or_all_and_names_itself_when_wrong():
    assert from_dict({}, ["evaluate.ifeval=all"]).evaluate.ifeval == "all"
    assert from_dict({}, ["evaluate.ifeval=0"]).evaluate.ifeval == 0
    for bad in ("-1", "some"):
        with pytest.raises(RecipeError, match=r"^evaluate\.ifeval: "):
            from_dict({}, [f"evaluate.ifeval={bad}"])
    with pytest.raises(RecipeError, match=r"^evaluate\.ifeval_max_new_tokens: "):
        from_dict({}, ["evaluate.ifeval_max_new_tokens=0"])


def test_hand_written_answers_get_their_known_verdicts(ifeval_checkers):
    assert ifeval.verdicts(NO_COMMA, "No commas here at all.") == {"strict": [True], "loose": [True]}
    assert ifeval.verdicts(NO_COMMA, "Yes, one comma.") == {"strict": [False], "loose": [False]}
    assert ifeval.verdicts(LOWER, "all of it in lower case.")["strict"] == [True]
    # a capitalised first line fails strictly; loose drops the first line and passes
    assert ifeval.verdicts(LOWER, "Sure:\nall of it in lower case.") == {"strict": [False], "loose": [True]}
    assert ifeval.verdicts(SHORT, "Dr. Smith went home. He slept.")["strict"] == [True]
    assert ifeval.verdicts(SHORT, "One. Two. Three.")["strict"] == [False]
    assert ifeval.verdicts(BOTH, "no commas and lower case")["strict"] == [True, True]
    assert ifeval.verdicts(BOTH, "Upper, with a comma")["strict"] == [False, False]
    assert ifeval.verdicts(NO_COMMA, "   ")["strict"] == [False]  # an empty answer follows nothing


def test_figures_intervals_and_paired_differences_from_known_answers(ifeval_checkers, tmp_path):
    rows = [NO_COMMA, LOWER, SHORT, BOTH]
    good = {1: "no commas", 2: "lower case", 3: "Dr. Smith went home. He slept.", 4: "no commas and lower"}
    bad = {1: "a, b", 2: "Upper", 3: "One. Two. Three.", 4: "no commas but Upper"}  # 4: one of two followed
    path = tmp_path / "ifeval.jsonl"
    path.write_text("".join(json.dumps({"model": m, "key": k, "response": t, "cut": False}) + "\n"
                            for m, answers in (("base", bad), ("M0", good)) for k, t in answers.items()))
    m = ifeval.summarize(["base", "M0", "M1"], rows, path, bootstrap=500, seed=0, size=4, max_new_tokens=64)
    assert list(m["models"]) == ["base", "M0"]  # M1 has no answers: left out, not counted as failing
    base, m0 = m["models"]["base"], m["models"]["M0"]
    assert base["prompt_strict"]["value"] == 0 and base["inst_strict"]["value"] == 20.0  # 1 of 5 instructions
    assert m0["prompt_strict"] == {"value": 100.0, "ci": [100.0, 100.0]}
    assert m0["average"] == 100.0 and base["average"] == 10.0
    assert m0["vs_base"]["prompt_strict"]["diff"] == 100.0 and m0["vs_base"]["inst_strict"]["diff"] == 80.0
    lo, hi = m0["vs_base"]["inst_strict"]["ci"]
    assert 0 < lo <= 80.0 <= hi <= 100
    # the headline's difference has its own interval, from the same resamples
    assert m0["vs_base"]["average"]["diff"] == 90.0
    lo, hi = m0["vs_base"]["average"]["ci"]
    assert lo <= 90.0 <= hi <= 100 and (lo, hi) != (0, 100)
    assert "vs_base" not in base and "vs_M0" not in m0
    assert base["by_type"]["punctuation:no_comma"] == {"n": 2, "strict": 50.0}
    assert m["instructions"] == 5 and m["prompts"] == 4


def test_checking_answers_touches_no_network(ifeval_checkers, hb_home):
    """A fresh process with every proxy pointing nowhere and NLTK's downloader disabled: the
    checkers import and count sentences from the cached tables alone."""
    code = (
        "import nltk, sys\n"
        "def refuse(*a, **k): sys.exit('nltk tried to download')\n"
        "nltk.download = refuse\n"
        "from humpback_lite import ifeval\n"
        "row = {'key': 3, 'prompt': 'x', 'instruction_id_list': ['length_constraints:number_sentences'],"
        " 'kwargs': [{'relation': 'less than', 'num_sentences': 3}]}\n"
        "print(ifeval.verdicts(row, 'Dr. Smith went home. He slept.'))\n"
    )
    nowhere = "http://127.0.0.1:9"
    env = {**os.environ, "HUMPBACK_HOME": str(hb_home), "HTTP_PROXY": nowhere, "HTTPS_PROXY": nowhere,
           "http_proxy": nowhere, "https_proxy": nowhere, "NO_PROXY": "", "HF_HUB_OFFLINE": "1"}
    env.pop("NLTK_DATA", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "{'strict': [True], 'loose': [True]}" in proc.stdout
    assert "Downloaded" not in proc.stdout + proc.stderr and "nltk_data" not in proc.stdout + proc.stderr


def test_a_corrupt_punkt_table_is_removed_and_named(ifeval_checkers, hb_home, monkeypatch, tmp_path):
    """A damaged cached table fails with its path and is removed, so the next run fetches it anew."""
    import shutil

    from humpback_lite import models

    home = tmp_path / "home"
    shutil.copytree(hb_home / "nltk_data", home / "nltk_data")
    monkeypatch.setattr(models, "home", lambda: home)
    table = home / "nltk_data" / "tokenizers" / "punkt_tab" / "english" / "sent_starters.txt"
    table.write_text("damaged")
    with pytest.raises(ifeval.IFEvalError, match="sent_starters.txt: sha256 does not match"):
        ifeval.punkt_dir()
    assert not table.exists()
