"""The run folder's names, in one place: stages, rounds and the models they train.

    seed  corpus  backward  augment                         one folder each
    round_00/train                                          M0 (seed only)
    round_NN/score  round_NN/select  round_NN/train         round N: judge M(N-1), model MN
    ablation_random  ablation_all                           the models curation is compared with
    evaluate  export

Nobody else builds or slices these strings. The figures each stage reports into the manifest
are typed records here too (`SelectCounts`, `TrainCounts`, ...): a reader names a field, never a
string key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

ROUND_KINDS = ("score", "select", "train")
ABLATIONS = ("random", "all")
_ROUND = re.compile(r"round_(\d{2,})/(\w+)")


def round_name(rnd: int) -> str:
    return f"round_{rnd:02d}"


def stage(kind: str, rnd: int | None = None) -> str:
    """`stage("score", 1)` -> "round_01/score"; `stage("corpus")` -> "corpus"."""
    if kind in ROUND_KINDS:
        if rnd is None:
            raise ValueError(f"stage {kind!r} needs a round")
        return f"{round_name(rnd)}/{kind}"
    return kind


def split(name: str) -> tuple[str, int | None]:
    """"round_01/score" -> ("score", 1); "corpus" -> ("corpus", None)."""
    m = _ROUND.fullmatch(name)
    return (m.group(2), int(m.group(1))) if m else (name, None)


def rounds(names: Iterable[str], kind: str) -> list[int]:
    """The rounds that have a `kind` stage among `names`, ascending."""
    return sorted({r for k, r in map(split, names) if k == kind and r is not None})


def ablation_stage(kind: str) -> str:
    return f"ablation_{kind}"


BASE = "base"
SEED_MODEL = "M0"  # trained on the seed alone: every model is compared with it and with the base


def round_model(rnd: int) -> str:
    """The model trained in round `rnd`: 0 -> "M0" (seed only), 2 -> "M2"."""
    return f"M{rnd}"


def model_round(model: str) -> int | None:
    """The inverse of `round_model`: "M2" -> 2; None for base, ablation models and other names."""
    m = re.fullmatch(r"M(\d+)", model)
    return int(m.group(1)) if m else None


def model_name(name: str) -> str | None:
    """The model a training stage produces: round_01/train -> "M1", ablation_random -> "random"."""
    kind, rnd = split(name)
    if kind == "train" and rnd is not None:
        return round_model(rnd)
    if kind.startswith("ablation_"):
        return kind.removeprefix("ablation_")
    return None


def model_stage(model: str) -> str | None:
    """The inverse of `model_name`: "M1" -> "round_01/train", "random" -> "ablation_random"; else None."""
    if (rnd := model_round(model)) is not None:
        return stage("train", rnd)
    return ablation_stage(model) if model in ABLATIONS else None


def served_name(adapter: str | Path) -> str:
    """The name an inference server knows a run's adapter by: the model it makes.
    <run>/round_01/train/adapter.gguf -> "M1", <run>/backward/adapter.gguf -> "backward"."""
    folder = Path(adapter).parent
    name = f"{folder.parent.name}/{folder.name}" if _ROUND.fullmatch(f"{folder.parent.name}/{folder.name}") else folder.name
    return model_name(name) or name


# ----------------------------------------------------------------------------- stage counts


# `typing.Self` exists from Python 3.11 only; the project runs on 3.10
C = TypeVar("C", bound="Counts")


@dataclass(kw_only=True)
class Counts:
    """A stage's figures as the manifest stores them (one flat JSON object). A subclass names the
    figures other modules read; `extra` keeps the rest (shown by `humpback status`)."""

    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Flat, without the figures a stage did not have (None): `of` restores them as None."""
        named = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **{k: v for k, v in named.items() if v is not None}}

    @classmethod
    def of(cls: type[C], data: Mapping[str, Any] | None) -> C:
        """The record of a manifest entry's `counts` (missing figures take their defaults)."""
        rest = dict(data or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: rest.pop(k) for k in known if k in rest}, extra=rest)


@dataclass(kw_only=True)
class SeedCounts(Counts):
    train: int = 0
    heldout: int = 0


@dataclass(kw_only=True)
class CorpusCounts(Counts):
    segments: int = 0
    funnel: dict[str, int] = field(default_factory=dict)
    text_yield: float | None = None  # kept characters / extracted characters


@dataclass(kw_only=True)
class AugmentCounts(Counts):
    pairs: int = 0
    resumed_from: int = 0
    empty_instructions: int = 0


@dataclass(kw_only=True)
class ScoreCounts(Counts):
    scored: int = 0
    unscored: int = 0
    mean_score: float | None = None
    histogram: dict[str, int] = field(default_factory=dict)
    checks: int = 0
    auc: float | None = None
    auc_hard: float | None = None
    auc_by_signal: dict[str, float | None] = field(default_factory=dict)
    auc_hard_by_signal: dict[str, float | None] = field(default_factory=dict)
    agreement_with_prev_judge: dict[str, Any] | None = None


@dataclass(kw_only=True)
class SelectCounts(Counts):
    candidates: int = 0
    kept: int = 0
    kept_share: float = 0.0
    cutoff: float | None = None
    histogram: dict[str, int] = field(default_factory=dict)
    injection_flip_rate: float | None = None
    benign_flip_rate: float | None = None


@dataclass(kw_only=True)
class TrainCounts(Counts):
    rows: int = 0
    steps: int = 0
    train_loss: float | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    seconds: float | None = None
    tokens_per_second: float | None = None
    backend: str | None = None
    seed_rows: int | None = None
    augmented_rows: int | None = None


@dataclass(kw_only=True)
class EvaluateCounts(Counts):
    heldout: int = 0
    judge: str | None = None
    nll: dict[str, float] = field(default_factory=dict)
    win_vs_base: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None


@dataclass(kw_only=True)
class IFEvalCounts(Counts):
    prompts: int = 0
    instructions: int = 0
    average: dict[str, float] = field(default_factory=dict)  # per model: mean of prompt and instruction level, strict


@dataclass(kw_only=True)
class ExportCounts(Counts):
    dataset_rows: int = 0
    seed_rows: int = 0
    augmented_rows: int = 0
    merged_mb: float | None = None
