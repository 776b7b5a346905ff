"""The run folder's names, in one place: stages, rounds and the models they train.

    seed  corpus  backward  augment                         one folder each
    round_00/train                                          M0 (seed only)
    round_NN/score  round_NN/select  round_NN/train         round N: judge M(N-1), model MN
    ablation_random  ablation_all                           the models curation is compared with
    evaluate  export

Nobody else builds or slices these strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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


def model_name(name: str) -> str | None:
    """The model a training stage produces: round_01/train -> "M1", ablation_random -> "random"."""
    kind, rnd = split(name)
    if kind == "train" and rnd is not None:
        return f"M{rnd}"
    if kind.startswith("ablation_"):
        return kind.removeprefix("ablation_")
    return None


def model_stage(model: str) -> str | None:
    """The inverse of `model_name`: "M1" -> "round_01/train", "random" -> "ablation_random"; else None."""
    if m := re.fullmatch(r"M(\d+)", model):
        return stage("train", int(m.group(1)))
    return ablation_stage(model) if model in ABLATIONS else None
