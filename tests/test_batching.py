"""Batched generation (`Engine.generate_many`, continuous batching over `parallel` sequences) with
the real model: no sequence reads another's tokens, seeds and stop strings act per sequence, and a
killed batched stage resumes to the bytes of an uninterrupted one although llama.cpp's kernels may
round differently with the batch's shape."""

from __future__ import annotations

import pytest

from humpback_lite import augment, store
from humpback_lite.engine import Engine
from humpback_lite.recipe import AugmentConfig
from humpback_lite.runtime import runtime_gguf
from humpback_lite.seed import load_seed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def segments():
    rows, _ = load_seed("builtin:seed", 0)
    return [{"id": f"seg-{i:03d}", "text": r["output"]} for i, r in enumerate(rows[:10])]


def _generate(gguf, parallel, prompts, **kw):
    e = Engine(gguf, n_ctx=1024, parallel=parallel, n_batch=256)
    finished = []
    try:
        texts = e.generate_many([e.format([{"role": "user", "content": p}]) for p in prompts],
                                on_done=lambda i, text, why: finished.append(i), **kw)
    finally:
        e.close()
    return texts, finished


def test_batched_greedy_text_is_what_the_model_alone_would_choose(model_gguf, segments):
    # 10 prompts over 4 slots (slots refilled as sequences finish; n_batch=256 splits the longer
    # prompts' evaluation over several decodes): every token a batched sequence picks greedily must
    # be the top token of the same model reading that sequence alone. llama.cpp's kernels round
    # differently with the batch's shape, flash attention most (its one-token path accumulates V in
    # f16, the prompt path in f32). Largest gap of the chosen token's logit below the lone model's
    # top over these 150 tokens (BF16 copy), flash attention off / on: AVX-512 EPYC 0.0000 / 0.067,
    # the AVX2 build 0.013 / 0.010. A sequence scored against its neighbour's text misses by 1.5 to
    # 13.7 (measured the same way), hence the 0.25 margin.
    gguf = runtime_gguf(model_gguf, "bf16")
    prompts = [f"Write a question this text answers:\n{s['text'][:600]}" for s in segments]
    batched, finished = _generate(gguf, 4, prompts, max_tokens=16, temperature=0.0)
    assert sorted(finished) == list(range(10)) and finished != sorted(finished)  # out of order: refilled
    alone = Engine(gguf, n_ctx=1024)
    try:
        for p, text in zip(prompts, batched, strict=True):
            context = alone.tokenize(alone.format([{"role": "user", "content": p}]))
            target = alone.tokenize(text)
            assert target, p
            for k, tok in enumerate(target):
                logits = alone.next_token_logits(context + target[:k])
                assert logits[tok] >= logits.max() - 0.25, (p[:60], text, k)
    finally:
        alone.close()


def test_seeds_and_stop_strings_act_per_sequence(model_gguf):
    gguf = runtime_gguf(model_gguf, "bf16")
    prompt = "List three fruits, one per line."
    texts, _ = _generate(gguf, 3, [prompt] * 3, max_tokens=20, temperature=1.0, seeds=[1, 1, 2])
    assert texts[0] == texts[1] != texts[2]
    cut, _ = _generate(gguf, 2, ["Count from 1 to 20, separated by commas."] * 2, max_tokens=40,
                       temperature=0.0, stop=["5"])
    assert cut[0] == cut[1] and "5" not in cut[0] and "4" in cut[0]


def test_killed_batched_augment_resumes_to_the_uninterrupted_bytes(model_gguf, segments, tmp_path, monkeypatch):
    # BF16 kernels round differently with the batch's shape (measured |logit change| ~1e-5, enough
    # to flip a sampled token now and then), so resume must repeat the uninterrupted run's batches.
    gguf = runtime_gguf(model_gguf, "bf16")
    cfg = AugmentConfig(max_new_tokens=24)
    e = Engine(gguf, n_ctx=1024, parallel=3)
    try:
        augment.augment(e, segments, tmp_path / "whole.jsonl", cfg, seed=7)
        real_append, appended = store.JsonlAppender.append, []

        def killed_after_four(self, row):
            if len(appended) == 4:
                raise KeyboardInterrupt
            appended.append(row)
            real_append(self, row)

        monkeypatch.setattr(store.JsonlAppender, "append", killed_after_four)
        with pytest.raises(KeyboardInterrupt):
            augment.augment(e, segments, tmp_path / "resumed.jsonl", cfg, seed=7)
        monkeypatch.setattr(store.JsonlAppender, "append", real_append)
        counts = augment.augment(e, segments, tmp_path / "resumed.jsonl", cfg, seed=7)
    finally:
        e.close()
    assert counts.resumed_from == 4 and counts.pairs == len(segments)
    assert (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_an_empty_or_oversized_prompt_is_refused_before_any_decode(model_gguf):
    from humpback_lite.models import ContextError, ModelError

    e = Engine(runtime_gguf(model_gguf, "bf16"), n_ctx=256, parallel=2)
    try:
        with pytest.raises(ModelError, match="prompt 1 is empty"):
            e.generate_many(["Hello", ""], max_tokens=4)
        with pytest.raises(ContextError, match="does not fit the context of 256"):
            e.generate_many(["Hello", "word " * 300], max_tokens=4)
        assert e.generate_many(["Hello"], max_tokens=2, temperature=0.0)  # the engine still works
    finally:
        e.close()


def test_reasoning_scores_batched_per_window_match_one_at_a_time(model_gguf, segments, tmp_path):
    """The paper's reasoning mode: a window's reasonings generated together, then each digit read;
    the same reasoning and digits as pair by pair (greedy, so up to kernel rounding: compared with
    the scores' resolution). Flash attention off: its one-row path moves a score by 0.004 here."""
    from humpback_lite import curate
    from humpback_lite.recipe import CurateConfig
    from humpback_lite.signals import Scorer

    gguf = runtime_gguf(model_gguf, "bf16")
    pairs = [{"id": s["id"], "instruction": "What does this text explain?", "output": s["text"]} for s in segments[:4]]
    pairs.append({"id": "empty", "instruction": " ", "output": "x"})
    cfg = CurateConfig(mode="reasoning", signals=["rubric"], reasoning_tokens=24)
    out = {}
    for parallel in (1, 4):
        e = Engine(gguf, n_ctx=1024, parallel=parallel, flash_attn=False)
        try:
            assert curate.batched_reasoning(e, cfg) == (parallel > 1)
            curate.score_pairs(Scorer(e), pairs, tmp_path / f"p{parallel}.jsonl", cfg)
        finally:
            e.close()
        out[parallel] = {r["id"]: r for r in store.read_jsonl(tmp_path / f"p{parallel}.jsonl")}
    assert out[4]["empty"]["skipped"] == "empty instruction"
    for i, one in out[1].items():
        if i == "empty":
            continue
        assert out[4][i]["reason"] == one["reason"], i
        assert out[4][i]["score_expected"] == pytest.approx(one["score_expected"], abs=2e-3), i
