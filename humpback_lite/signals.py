"""Curation signals: how much does a candidate answer look like an answer to its instruction?

- `rubric`: the paper's 5-point rubric, read as the expected digit after `Score:` (one pass).
- `pmi`: mean log P(answer | instruction) - mean log P(answer | empty instruction), per answer
  token, under the forward judge. Positive when the instruction makes the answer more likely.
- `ifd`: -(NLL(answer | instruction) / NLL(answer | empty instruction)), the instruction-following
  difficulty of Superfiltering (Li et al. 2024) with the sign flipped so that higher = keep.
- `backward`: mean log P(instruction | answer) - mean log P(instruction | empty answer) under the
  backward model M_yx: does the answer predict its instruction?

Why likelihoods: a 135M judge cannot read the rubric (measured AUC 0.42-0.54 on matched vs
mismatched pairs), while its likelihoods separate them (PMI 0.82, IFD 0.84-0.86 on 40 human-written
Python FAQ pairs against hard negatives; see README, "Curation"). `combined` ranks candidates by
the average of their percentile ranks under several signals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import prompts
from .engine import Engine
from .recipe import LIKELIHOOD_SIGNALS, RUBRIC_MODES, SIGNALS  # noqa: F401  (the recipe's vocabulary)


@dataclass
class Scorer:
    """Computes signals for pairs with a forward judge and, for `backward`, the backward model.

    The empty-instruction pass depends only on the answer: it is cached per answer text, so a
    mismatched or hard-negative check that reuses an answer costs one pass, not two."""

    judge: Engine
    backward_engine: Engine | None = None
    tags: bool = True
    max_answer_tokens: int = 400
    _uncond: dict[str, float] = field(default_factory=dict)
    _backward_ref: dict[str, float] = field(default_factory=dict)

    def _answer_tokens(self, engine: Engine, answer: str) -> list[int]:
        # sanitize: corpus text cannot close the turn; cut to keep both passes inside n_ctx
        text = engine.truncate(prompts.sanitize(answer), self.max_answer_tokens)
        return engine.tokenize(text)

    def _mean_logprob(self, engine: Engine, context: str, target: list[int]) -> float:
        if not target:
            return 0.0
        return float(engine.token_logprobs(engine.tokenize(context), target).mean())

    def forward(self, instruction: str, answer: str) -> dict[str, float]:
        """cond, uncond, pmi and ifd for one pair (two passes, one of them cached per answer)."""
        e = self.judge
        target = self._answer_tokens(e, answer)
        cond = self._mean_logprob(e, e.format(prompts.forward_messages(instruction, tags=self.tags)), target)
        if answer not in self._uncond:
            self._uncond[answer] = self._mean_logprob(e, e.format(prompts.forward_messages("", tags=self.tags)), target)
        uncond = self._uncond[answer]
        ifd = -(cond / uncond) if uncond < 0 else 0.0
        return {"cond": round(cond, 4), "uncond": round(uncond, 4), "pmi": round(cond - uncond, 4),
                "ifd": round(ifd, 4)}

    def backward(self, instruction: str, answer: str) -> dict[str, float]:
        e = self.backward_engine
        if e is None:
            raise ValueError("the backward signal needs the backward model (M_yx)")
        target = e.tokenize(prompts.sanitize(instruction).strip())
        text = e.truncate(prompts.sanitize(answer), self.max_answer_tokens)
        lp = self._mean_logprob(e, e.format(prompts.backward_messages(text)), target)
        key = instruction
        if key not in self._backward_ref:
            self._backward_ref[key] = self._mean_logprob(e, e.format(prompts.backward_messages("")), target)
        return {"backward_lp": round(lp, 4), "backward": round(lp - self._backward_ref[key], 4)}

    def close(self) -> None:
        self.judge.close()
        if self.backward_engine is not None:
            self.backward_engine.close()

    def signals(self, instruction: str, answer: str, wanted: Sequence[str], rubric) -> dict[str, float]:
        """Every signal in `wanted`; `rubric(instruction, answer)` returns the rubric record."""
        out: dict = {}
        if "rubric" in wanted:
            out.update(rubric(instruction, answer))
        if {"pmi", "ifd"} & set(wanted):
            out.update(self.forward(instruction, answer))
        if "backward" in wanted:
            out.update(self.backward(instruction, answer))
        return out


def ranks(values: list[float]) -> list[float]:
    """0-based ranks of `values`; ties share their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def percentile_ranks(values: list[float]) -> list[float]:
    """Each value's rank among `values` scaled to [0, 1] (ties share their mean rank)."""
    if len(values) == 1:
        return [0.5]
    return [r / (len(values) - 1) for r in ranks(values)]


def combine(records: list[dict], names: Sequence[str]) -> list[float | None]:
    """Rank average of `names` over the records that have all of them (None for the others)."""
    usable = [i for i, r in enumerate(records) if all(r.get("signals", {}).get(n) is not None for n in names)]
    out: list[float | None] = [None] * len(records)
    if not usable:
        return out
    per_signal = [percentile_ranks([records[i]["signals"][n] for i in usable]) for n in names]
    for j, i in enumerate(usable):
        out[i] = round(sum(ranks[j] for ranks in per_signal) / len(names), 4)
    return out
