"""Evaluation metrics on cases whose answer is known, with the real model and real training."""

import random

import numpy as np
import pytest

from humpback_lite import evaluate
from humpback_lite.engine import MIN_ROWS, Engine
from humpback_lite.evaluate import Judge, answer_nll, mean_nll, win_rate

WORDS = ("apple river stone cloud piano tiger lemon candle forest rocket silver garden window "
         "marble pepper harbor violet castle shadow meadow copper falcon").split()


def copy_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(12))
        out.append({"id": f"c{seed}-{i}", "instruction": f"Repeat exactly: {text}", "output": text})
    return out


@pytest.fixture(scope="module")
def copy_adapter(model_gguf, hf_weights, tmp_path_factory):
    """A LoRA trained for a few real steps to copy the instruction's text."""
    from humpback_lite import prompts
    from humpback_lite.adapters import peft_to_gguf
    from humpback_lite.recipe import TrainConfig
    from humpback_lite.train import train_lora

    out = tmp_path_factory.mktemp("copy") / "adapter"
    rows = [prompts.forward_row(p) for p in copy_pairs(16, seed=1)]
    cfg = TrainConfig(quantize="none", lora_r=8, lora_alpha=16, learning_rate=2e-3, max_steps=12,
                      batch_size=4, max_length=96)
    train_lora(rows, out, hf_weights, cfg, seed=0)
    peft_to_gguf(out, model_gguf, out / "adapter.gguf")
    return out / "adapter.gguf"


def test_token_logprobs_match_next_token_logits_one_by_one(engine):
    context = engine.tokenize(engine.format([{"role": "user", "content": "Name a colour."}]))
    target = engine.tokenize("Blue is a colour.")
    lp = engine.token_logprobs(context, target)
    for i, tok in enumerate(target):
        # Each prefix read whole from an empty cache, as the one pass reads it. (One new token on
        # the cached prefix took llama.cpp's one-row kernels before engine.MIN_ROWS, which round
        # apart on some CPUs: one-pass vs incremental max 0.20 nats on an AVX2-only EPYC's Q4_1.)
        engine.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        engine.llm.n_tokens = 0
        logits = engine.next_token_logits(context + target[:i]).astype(np.float64)
        expect = logits[tok] - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        assert lp[i] == pytest.approx(expect, abs=1e-3)


@pytest.mark.slow  # loads the real model into llama.cpp
def test_passes_that_share_a_prefix_score_as_if_alone_and_evaluate_it_once(engine, monkeypatch):
    # what the injection checks send: one pair, and copies of it with lines appended (an answer of
    # a corpus segment's length: passes shorter than MIN_ROWS tokens are never shared)
    context = engine.tokenize(engine.format([{"role": "user", "content": "What does a Python list hold?"}]))
    other = engine.tokenize(engine.format([{"role": "user", "content": "Name a colour."}]))
    answer = engine.tokenize("A list holds items in order. It can grow, shrink and hold items of any type. " * 4)
    passes = [(context, answer), (context, answer + engine.tokenize("\n\nScore: 5")), (other, answer),
              (context, answer + engine.tokenize("\n\nSee the documentation for more details.")), (context, answer)]
    alone = [engine.token_logprobs(c, t) for c, t in passes]
    decoded: list[int] = []
    decode = engine.llm._ctx.decode

    def counting(batch):
        decoded.append(batch.batch.n_tokens)
        return decode(batch)

    monkeypatch.setattr(engine.llm._ctx, "decode", counting)
    together = engine.token_logprobs_many(passes)
    for a, b in zip(alone, together, strict=True):
        assert b.tolist() == a.tolist()  # every decode >= MIN_ROWS rows: llama.cpp computes each row alike
    # two contexts' worth of prompt, the answer twice, the appended lines (each tail topped up to
    # MIN_ROWS rows): not five whole passes
    assert sum(decoded) < 0.6 * sum(len(c) + len(t) for c, t in passes), decoded
    assert min(decoded) >= MIN_ROWS
    # the cache is left empty: the next pass is computed as on a fresh engine
    assert engine.token_logprobs(*passes[1]).tolist() == alone[1].tolist()


@pytest.mark.slow  # loads the real model into llama.cpp
@pytest.mark.parametrize("flash_attn", [False, True])
def test_a_pass_scores_the_same_whatever_was_cached_before_it(model_gguf, flash_attn):
    # Before decodes were kept >= MIN_ROWS rows (measured on the BF16 copy, AVX-512 EPYC): next-token
    # logits after a cached prefix differed from cold ones by 0.23 with a 1-row tail; with flash
    # attention by 0.20 with a 5-row tail and 0.03 between n_batch 64 and 512. Now equal to the bit:
    # this test passes on the AVX-512 EPYC and on the AVX2 build (2026-12-01), and the same checks
    # hold on the BF16 copy there and the F16 copy on the AVX2 build.
    from humpback_lite import prompts

    e = Engine(model_gguf, n_ctx=1024, flash_attn=flash_attn)
    try:
        ctx = e.tokenize(e.format(prompts.forward_messages("How do I read a file's lines in Python?")))
        answer = e.tokenize("Open it with open() in a with-statement and iterate over the file object; each line "
                            "keeps its newline, which str.rstrip removes. " * 4)
        cold = e.token_logprobs(ctx, answer).tolist()
        for tail in (1, 5, 63, 64, 100):
            other = answer[:-tail] + e.tokenize(" Something else entirely.")
            assert e.token_logprobs_many([(ctx, other), (ctx, answer)])[1].tolist() == cold, tail
        short = e.tokenize("Yes.")  # a pass under MIN_ROWS tokens after a longer one that shares its start
        alone = e.token_logprobs(ctx[:20], short).tolist()
        assert e.token_logprobs_many([(ctx[:30], answer[:60]), (ctx[:20], short)])[1].tolist() == alone
        whole = ctx + answer
        e.llm.n_tokens = 0
        ref = e.next_token_logits(whole).tolist()
        for tail in (1, 5, 63, 200):
            e.llm.n_tokens = 0
            e.next_token_logits(whole[:-tail])  # left in the prefix cache
            assert e.next_token_logits(whole).tolist() == ref, tail
    finally:
        e.close()
    other_batch = Engine(model_gguf, n_ctx=1024, flash_attn=flash_attn, n_batch=128)
    try:
        assert other_batch.token_logprobs(ctx, answer).tolist() == cold
    finally:
        other_batch.close()


@pytest.mark.slow  # loads the real model into llama.cpp
def test_flash_attention_moves_log_probs_no_more_than_choosing_another_runtime_type(model_gguf):
    # engine.flash_attn=on against off on these 8 seed answers (987 tokens), per token, measured
    # 2026-12-01: max |difference| 0.088 (BF16 copy) / 0.026 (F16), mean -0.0001 / -0.00002 on the
    # AVX-512 EPYC; 0.095 / 0.023, mean +0.0012 / +0.0001 on the AVX2 build. The BF16 and F16 copies
    # themselves (flash attention off) differ by max 0.160 / 0.132, mean -0.0003 / -0.0004. Bounds:
    # under twice the copies' max, and a mean under 0.002 (the AVX2 BF16 mean is 60 % of it).
    from humpback_lite import prompts
    from humpback_lite.runtime import runtime_gguf
    from humpback_lite.seed import load_seed

    rows, _ = load_seed("builtin:seed", 0)

    def logprobs(gguf, flash_attn: bool) -> np.ndarray:
        e = Engine(gguf, n_ctx=2048, flash_attn=flash_attn)
        try:
            assert e.llm.context_params.flash_attn_type == int(flash_attn)  # llama.cpp's ENABLED / DISABLED
            return np.concatenate([e.token_logprobs(e.tokenize(e.format(prompts.forward_messages(r["instruction"]))),
                                                    e.tokenize(r["output"].strip())) for r in rows[:8]])
        finally:
            e.close()

    for kind in ("bf16", "f16"):
        gguf = runtime_gguf(model_gguf, kind)
        d = logprobs(gguf, True) - logprobs(gguf, False)
        assert np.abs(d).max() < 0.25 and abs(d.mean()) < 0.002, (kind, np.abs(d).max(), d.mean())


@pytest.mark.slow  # loads the real model into llama.cpp
def test_token_logprobs_span_several_llama_batches(model_gguf):
    e = Engine(model_gguf, n_ctx=512, n_batch=16)
    try:
        context = e.tokenize("The numbers from one to ten are")
        target = e.tokenize(" one, two, three, four, five, six, seven, eight, nine, ten.")
        small = e.token_logprobs(context, target)
    finally:
        e.close()
    big = Engine(model_gguf, n_ctx=512)
    try:
        full = big.token_logprobs(context, target)
    finally:
        big.close()
    assert len(context) + len(target) > 16
    np.testing.assert_allclose(small, full, atol=2e-2)


def test_copy_adapter_lowers_nll_on_held_out_copying(model_gguf, copy_adapter):
    held = copy_pairs(6, seed=2)
    base = Engine(model_gguf, n_ctx=512)
    tuned = Engine(model_gguf, adapter=copy_adapter, n_ctx=512)
    try:
        nll_base = mean_nll(answer_nll(base, held))
        nll_tuned = mean_nll(answer_nll(tuned, held))
    finally:
        base.close()
        tuned.close()
    assert nll_tuned < 0.7 * nll_base, (nll_base, nll_tuned)


def test_judge_given_identical_answers_gives_fifty_percent(engine):
    judge = Judge(engine)
    answer = "A list is an ordered, mutable collection of items, written in square brackets: [1, 2, 3]."
    outcomes = [judge.compare(q, answer, answer)["outcome"] for q in ("What is a list?", "Explain lists in Python.")]
    assert outcomes == ["tie", "tie"]
    assert win_rate(outcomes)["win_rate"] == 0.5


def test_judge_verdict_is_read_in_both_orders(engine):
    judge = Judge(engine)
    v = judge.compare("What is 2 + 2?", "2 + 2 = 4.", "I like turtles and the colour of the sea.")
    assert 0.0 <= v["p_a_first"] <= 1.0 and 0.0 <= v["p_a_second"] <= 1.0
    expected = ("win" if min(v["p_a_first"], v["p_a_second"]) > 0.5
                else "loss" if max(v["p_a_first"], v["p_a_second"]) < 0.5 else "tie")
    assert v["outcome"] == expected


@pytest.mark.slow  # loads the real model into llama.cpp
def test_judging_a_pairs_matchups_together_gives_the_verdicts_of_one_at_a_time(engine, monkeypatch):
    # the evaluate stage's window: one held-out instruction, every model's answer against the others
    judge = Judge(engine)
    q = "What does a Python list hold?"
    answers = ["Items in order.", "A list holds items of any type, in order; it can grow and shrink.",
               "I like turtles and the colour of the sea."]
    items = [(q, answers[a], answers[b]) for a, b in ((1, 0), (2, 0), (2, 1))]
    alone = [judge.compare(*item) for item in items]
    decoded: list[int] = []
    decode = engine.llm._ctx.decode
    monkeypatch.setattr(engine.llm._ctx, "decode", lambda batch: decoded.append(batch.batch.n_tokens) or decode(batch))
    together = judge.compare_many(items)
    for a, b in zip(alone, together, strict=True):
        assert b["p_a_first"] == pytest.approx(a["p_a_first"], abs=2e-2)
        assert b["p_a_second"] == pytest.approx(a["p_a_second"], abs=2e-2)
    whole = sum(len(engine.tokenize(judge.prompt(q, *ab))) for _, x, y in items for ab in ((x, y), (y, x)))
    assert sum(decoded) < 0.5 * whole, (sum(decoded), whole)  # the rubric and the instruction read once


def test_win_rate_counts_ties_as_half():
    assert win_rate(["win", "tie", "loss", "win"]) == {"n": 4, "win": 2, "tie": 1, "loss": 1, "win_rate": 0.625}


def test_data_stats_counts_openings_and_sources():
    segs = [{"text": "x" * 10, "provenance": "a.html#h"}, {"text": "y" * 30, "provenance": "a.html#i"},
            {"text": "z" * 20, "provenance": "b.txt"}]
    pairs = [{"instruction": "How do I sort a list?"}, {"instruction": "how do I copy?"},
             {"instruction": "What is X?"}]
    s = evaluate.data_stats(segs, pairs)
    assert s["segment_chars"]["median"] == 20
    assert s["openings"][0] == ("how do", 2)
    assert dict(s["sources"]) == {"a.html": 2, "b.txt": 1}


@pytest.mark.slow  # loads the real model into llama.cpp
def test_evaluation_resumes_after_the_last_complete_record(model_gguf, tmp_path):
    from humpback_lite.evaluate import Contender, evaluate_models
    from humpback_lite.seed import load_seed

    _, held = load_seed("builtin:seed", 2)
    opened = []

    def make_engine(adapter=None):
        opened.append(adapter)
        return Engine(model_gguf, adapter=adapter, n_ctx=1024)

    args = dict(contenders=[Contender("base", None), Contender("M0", None)], heldout=held, out_dir=tmp_path,
                judge_engine=make_engine, judge_name="base model", max_new_tokens=8)
    first = evaluate_models(make_engine, **args)
    assert first["models"]["M0"]["vs_base"]["n"] == 2
    judgments = (tmp_path / "judgments.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "judgments.jsonl").write_text(judgments[0] + judgments[1][:20])  # killed mid-write
    opened.clear()
    second = evaluate_models(make_engine, **args)
    assert second == first
    assert len(opened) == 1  # only the judge was needed again: NLL and answers were complete
    assert (tmp_path / "judgments.jsonl").read_text().splitlines(keepends=True) == judgments


@pytest.mark.slow  # loads the real model into llama.cpp
def test_overlong_pairs_are_cut_or_skipped_not_fatal(model_gguf):
    e = Engine(model_gguf, n_ctx=256)
    try:
        long_text = "word " * 400
        rows = answer_nll(e, [{"id": "a", "instruction": long_text, "output": "x"},
                              {"id": "b", "instruction": "Say hi.", "output": long_text}])
        assert rows[0]["tokens"] == 0 and "skipped" in rows[0]
        assert 0 < rows[1]["tokens"] < 256
        assert 0.0 <= Judge(e).p_first(long_text, long_text, long_text) <= 1.0
    finally:
        e.close()


def test_repetition_share_spots_an_answer_that_loops():
    from humpback_lite.evaluate import repetition

    loop = "A compiler translates code. " * 4
    assert repetition(loop) > 0.5
    assert repetition("A compiler translates source code into machine code that the CPU runs.") == 0.0
    assert repetition("too short") == 0.0


def test_bootstrap_intervals_have_known_answers():
    from humpback_lite.evaluate import nll_diff_ci, win_rate_ci

    assert win_rate_ci(["win"] * 10) == [1.0, 1.0]
    lo, hi = win_rate_ci(["win", "loss"] * 10, b=500)
    assert lo < 0.5 < hi
    rows = [{"model": m, "id": str(i), "nll_sum": base + (-1.0 if m == "a" else 0.0), "tokens": 10}
            for i, base in enumerate([20.0, 30.0, 25.0, 40.0]) for m in ("a", "b")]
    d = nll_diff_ci(rows, "a", "b", n_boot=300)
    assert d["diff"] == pytest.approx(-0.1) and d["ci"] == [pytest.approx(-0.1), pytest.approx(-0.1)]
    assert nll_diff_ci(rows, "a", "missing") is None


def test_final_model_meets_each_ablation_model():
    from humpback_lite.evaluate import matchups_of

    m = matchups_of(["base", "M0", "M1", "random", "all"])
    assert ("M1", "random") in m and ("M1", "all") in m and ("random", "base") in m and ("M0", "M0") not in m
