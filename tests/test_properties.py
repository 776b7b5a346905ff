"""Property tests: no input makes the readers, the prompt helpers, JSONL resume or the recipe
overrides crash or hang; they either work or raise the project's one-line error types."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from humpback_lite import prompts
from humpback_lite.readers import CorpusError, Funnel, file_documents, html_sections, markdown_sections
from humpback_lite.recipe import RecipeError, from_dict
from humpback_lite.store import JsonlAppender


@pytest.fixture(scope="module")
def trafilatura_loaded():
    """Loaded before the first example: trafilatura's import and first extraction (~3 s on a busy
    2-core machine) would exceed the deadline of whichever example came first."""
    import trafilatura

    list(html_sections("<html><body><h1>T</h1><p>warm up</p></body></html>", "x.html"))
    return trafilatura


FAST = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
SPECIALS = st.sampled_from(["<|im_start|>", "<|im_end|>", "</answer>", "<answer>", "Score: 5", "\n\n", "#", "\x00"])
TEXT = st.lists(st.one_of(st.text(max_size=40), SPECIALS), max_size=12).map("".join)


@FAST
@given(TEXT)
def test_prompt_helpers_never_let_template_markers_through(text):
    for out in (prompts.sanitize(text), prompts.judge_view(text), prompts.clean_instruction(text)):
        assert isinstance(out, str)
        assert "<|im_start|>" not in out and "<|im_end|>" not in out and "</answer>" not in out


@FAST
@given(st.binary(max_size=3000), st.sampled_from([".txt", ".md", ".html", ".jsonl", ".csv", ".warc", ".txt.gz", ".json"]))
def test_readers_skip_or_read_any_bytes_without_crashing(data, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"input{suffix}"
        path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
        funnel = Funnel()
        try:
            docs = list(file_documents(path, funnel))
        except CorpusError:
            return
        assert all(isinstance(doc.text, str) for doc in docs)


@FAST
@given(text=TEXT)
def test_markdown_and_html_sectioning_accept_any_text(trafilatura_loaded, text):
    assert all(isinstance(d.text, str) for d in markdown_sections(text, "x.md"))
    assert all(isinstance(d.text, str) for d in html_sections(f"<html><body>{text}</body></html>", "x.html"))


@FAST
@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=10), max_size=3), max_size=5),
       st.binary(max_size=80))
def test_jsonl_resume_keeps_every_complete_record_whatever_the_torn_tail(records, tail):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.jsonl"
        with JsonlAppender(path) as out:
            for r in records:
                out.append(r)
        with open(path, "ab") as f:
            f.write(tail.replace(b"\n", b""))  # a torn last line never has its newline
        with JsonlAppender(path) as again:
            assert again.done == records
            again.append({"after": 1})
        with JsonlAppender(path) as third:
            assert third.done == [*records, {"after": 1}]


KEYS = st.sampled_from(["rounds", "seed", "train.epochs", "train.lora_r", "curate.mode", "curate.top_fraction",
                        "data.corpus", "engine.n_ctx", "engine.extra_buffers", "nope", "train.nope", "data"])
VALUES = st.one_of(st.integers(-5, 5000), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(), st.none(),
                   st.lists(st.text(max_size=4), max_size=3))


@FAST
@given(st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_any_recipe_override_either_builds_or_names_the_bad_key(pairs):
    data: dict = {}
    for key, value in pairs:
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
        node[last] = value
    try:
        from_dict(data)
    except RecipeError as e:  # one line naming the offending key
        assert "\n" not in str(e) and any(k.split(".")[0] in str(e) or k.split(".")[-1] in str(e) for k, _ in pairs)


def _numeric_fields(cls, prefix: str = ""):
    """Every int/float field of the recipe, dotted (`train.lora_dropout`)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            yield from _numeric_fields(t, f"{prefix}{f.name}.")
        elif t in (int, float) or set(typing.get_args(t)) - {type(None)} in ({int}, {float}):
            yield f"{prefix}{f.name}", t


def test_every_numeric_recipe_field_refuses_an_out_of_range_value_naming_itself():
    import math

    from humpback_lite.recipe import Recipe

    fields = dict(_numeric_fields(Recipe))
    assert len(fields) >= 45  # a new field joins this test by itself
    for key, kind in fields.items():
        for bad in ([-2] if kind is int else [-2.0, math.nan]):
            try:
                from_dict({}, [f"{key}={bad}"])
            except RecipeError as e:
                assert str(e).startswith(f"{key}: "), (key, str(e))
            else:
                raise AssertionError(f"{key}={bad} was accepted")
