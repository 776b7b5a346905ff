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
Python FAQ pairs against hard negatives; see docs/curation.md). `combined` ranks candidates by
the average of their percentile ranks under several signals.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from . import prompts
from .engines import EngineLike
from .recipe import LIKELIHOOD_SIGNALS, RUBRIC_MODES, SIGNALS  # noqa: F401  (the recipe's vocabulary)


@dataclass
class Scorer:
    """Computes signals for pairs with a forward judge and, for `backward`, the backward model.

    The empty-instruction pass depends only on the answer: it is cached per answer text, so a
    mismatched or hard-negative check that reuses an answer costs one pass, not two.

    The backward model is the same in every round, so its signals for a pair are too: those in
    `known_backward` (a previous round's, by (instruction, answer)) are not computed again, and the
    backward model is opened (`open_backward`) only when a pair is not there."""

    judge: EngineLike
    backward_engine: EngineLike | None = None
    tags: bool = True
    max_answer_tokens: int = 400
    open_backward: Callable[[], EngineLike] | None = None
    known_backward: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    _uncond: dict[str, float] = field(default_factory=dict)
    _backward_ref: dict[str, float] = field(default_factory=dict)

    def _answer_tokens(self, engine: EngineLike, answer: str) -> list[int]:
        # sanitize: corpus text cannot close the turn; cut to keep both passes inside n_ctx
        text = engine.truncate(prompts.sanitize(answer), self.max_answer_tokens)
        return engine.tokenize(text)

    @staticmethod
    def _mean_logprobs(engine: EngineLike, passes: list[tuple[str, list[int]]]) -> list[float]:
        """Mean log-prob of each (context text, target tokens); 0 for an empty target. The passes
        go to the engine together, so that it can share their common prefixes."""
        todo = [i for i, (_, target) in enumerate(passes) if target]
        lps = engine.token_logprobs_many([(engine.tokenize(passes[i][0]), passes[i][1]) for i in todo])
        out = [0.0] * len(passes)
        for i, lp in zip(todo, lps, strict=True):
            out[i] = float(lp.mean())
        return out

    def forward_many(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, float]]:
        """cond, uncond, pmi and ifd for each (instruction, answer): the instruction passes, then
        the empty-instruction passes of the answers not seen before."""
        e = self.judge
        targets = [self._answer_tokens(e, answer) for _, answer in pairs]
        conds = self._mean_logprobs(e, [(e.format(prompts.forward_messages(inst, tags=self.tags)), t)
                                        for (inst, _), t in zip(pairs, targets, strict=True)])
        new = {answer: t for (_, answer), t in zip(pairs, targets, strict=True) if answer not in self._uncond}
        empty = e.format(prompts.forward_messages("", tags=self.tags))
        self._uncond.update(zip(new, self._mean_logprobs(e, [(empty, t) for t in new.values()]), strict=True))
        out = []
        for (_, answer), cond in zip(pairs, conds, strict=True):
            uncond = self._uncond[answer]
            ifd = -(cond / uncond) if uncond < 0 else 0.0
            out.append({"cond": round(cond, 4), "uncond": round(uncond, 4), "pmi": round(cond - uncond, 4),
                        "ifd": round(ifd, 4)})
        return out

    def backward_many(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, float]]:
        """backward_lp and backward for each (instruction, answer), under the backward model."""
        todo = [(inst, answer) for inst, answer in pairs if (inst, answer) not in self.known_backward]
        new = dict(zip(todo, self._backward_passes(todo), strict=True)) if todo else {}
        return [dict(self.known_backward[p] if p in self.known_backward else new[p]) for p in pairs]

    def _backward_passes(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, float]]:
        if self.backward_engine is None and self.open_backward is not None:
            self.backward_engine = self.open_backward()
        e = self.backward_engine
        if e is None:
            raise ValueError("the backward signal needs the backward model (M_yx)")
        targets = [e.tokenize(prompts.sanitize(inst).strip()) for inst, _ in pairs]
        lps = self._mean_logprobs(e, [(e.format(prompts.backward_messages(
            e.truncate(prompts.sanitize(answer), self.max_answer_tokens))), t)
            for (_, answer), t in zip(pairs, targets, strict=True)])
        new = {inst: t for (inst, _), t in zip(pairs, targets, strict=True) if inst not in self._backward_ref}
        empty = e.format(prompts.backward_messages(""))
        self._backward_ref.update(zip(new, self._mean_logprobs(e, [(empty, t) for t in new.values()]), strict=True))
        return [{"backward_lp": round(lp, 4), "backward": round(lp - self._backward_ref[inst], 4)}
                for (inst, _), lp in zip(pairs, lps, strict=True)]

    def forward(self, instruction: str, answer: str) -> dict[str, float]:
        return self.forward_many([(instruction, answer)])[0]

    def backward(self, instruction: str, answer: str) -> dict[str, float]:
        return self.backward_many([(instruction, answer)])[0]

    def likelihoods(self, pairs: Sequence[tuple[str, str]], wanted: Collection[str]) -> list[dict[str, float]]:
        """The likelihood signals in `wanted` for each (instruction, answer): the judge's passes
        for all pairs, then the backward model's (a server that swaps adapters per request swaps
        twice, not per pair)."""
        out: list[dict[str, float]] = [{} for _ in pairs]
        if {"pmi", "ifd"} & set(wanted):
            for o, sig in zip(out, self.forward_many(pairs), strict=True):
                o.update(sig)
        if "backward" in wanted:
            for o, sig in zip(out, self.backward_many(pairs), strict=True):
                o.update(sig)
        return out

    def close(self) -> None:
        self.judge.close()
        if self.backward_engine is not None:
            self.backward_engine.close()


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
