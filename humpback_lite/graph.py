"""The loop as data: every stage, the recipe sections it depends on, and what it reads.

From this one table follow the order of a run (`plan`), every stage's fingerprint
(`fingerprint`), and which folders a recipe no longer has (`status` in the CLI).

A stage's fingerprint hashes its *whole* config sections, minus the fields named in its `ignore`
list (fields that cannot change its output), the digests of the outside files it reads (seed file,
corpus, base model) and the *output digests* of the stages it reads. So a new recipe field reruns
the stages whose sections hold it without anyone touching this file, and a cheap stage that reruns
and writes the same bytes (the seed split after a corpus setting changed) invalidates nothing below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import layout
from .recipe import RayConfig, Recipe
from .store import fingerprint as _hash

STAGE_VERSION = 5  # bump when a stage's output format or algorithm changes

# Kernel choices, not results: thread count does not change llama.cpp's numbers; extra buffers
# (repacked layouts) and flash attention change only float rounding, and users switch extra buffers
# off after a crash.
# Where the model runs (server address, key, retries, Ray) changes no number either; which backend
# runs it does (a server batches and rounds its own way), so `engine.backend` reruns.
ENGINE_SAME = ("engine.n_threads", "engine.extra_buffers", "engine.flash_attn", "engine.base_url", "engine.api_key_env",
               "engine.served_model", "engine.timeout", "engine.retries", "engine.executor")
# Both lists are spelled out: a new `data` field is in neither, so it reruns both stages (the seed
# split costs milliseconds, and its unchanged output stops the chain) rather than neither.
SEED_FIELDS = ("data.seed", "data.heldout", "data.max_seed")
CORPUS_FIELDS = tuple(f"data.{name}" for name in (
    "corpus", "min_chars", "max_chars", "max_segments", "text_field", "include", "exclude", "repetition",
    "headers", "boilerplate", "language", "dedup", "dedup_threshold"))
SELECT_ONLY = ("curate.threshold", "curate.top_fraction", "curate.target_count", "curate.dedup", "curate.max_per_source")
# IFEval is its own stage, so asking for more of it (evaluate.ifeval=all) keeps the held-out
# answers and judgments, and a new judge keeps IFEval's answers. Both lists are spelled out, as above.
IFEVAL_FIELDS = ("evaluate.ifeval", "evaluate.ifeval_max_new_tokens")
HELDOUT_EVAL_FIELDS = ("evaluate.limit", "evaluate.max_new_tokens", "evaluate.judge")
RAY = tuple(f"ray.{f.name}" for f in dataclasses.fields(RayConfig))  # where work runs, not what it gives
# `name` labels a run; `rounds` decides which stages exist, which the inputs already capture.
EVERYWHERE = ("run.name", "run.rounds")


@dataclass(frozen=True)
class Spec:
    """One kind of stage.

    sections: recipe sections hashed whole ("run" = the top-level scalars; "*" = every section).
    inputs: what it reads. Stages by kind; round stages relative to the stage's round: `@prev`,
      `@this` (absent for round 0), `@last`, `@all`; `ablation@all`; outside files as `file:seed`,
      `file:corpus`, `file:model`.
    ignore: dotted fields of those sections that cannot change the output.
    rounds_from: for round stages, the first round (None: not a round stage).
    when: dotted recipe fields that must all be true (non-zero) for the stage to exist.
    """

    kind: str
    sections: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    rounds_from: int | None = None
    when: tuple[str, ...] = ()


GRAPH: tuple[Spec, ...] = (
    Spec("seed", ("data",), ("file:seed",), ignore=CORPUS_FIELDS),
    Spec("corpus", ("data", "run"), ("file:corpus",), ignore=SEED_FIELDS + ("run.model", "run.tags")),
    Spec("backward", ("backward_train", "run"), ("seed", "file:model"), ignore=("run.tags",)),
    Spec("augment", ("augment", "engine", "run"), ("corpus", "backward", "file:model"), ignore=ENGINE_SAME + ("run.tags",)),
    Spec("score", ("curate", "engine", "run"), ("augment", "train@prev", "backward", "score@prev", "file:model"),
         ignore=ENGINE_SAME + SELECT_ONLY, rounds_from=1),
    Spec("select", ("curate",), ("score@this",), rounds_from=1),
    Spec("train", ("train", "run"), ("seed", "select@this", "file:model"), rounds_from=0),
    *(Spec(layout.ablation_stage(a), ("train", "run"), ("seed", "score@last", "select@last", "file:model"),
           when=("evaluate.enabled", "evaluate.ablation")) for a in layout.ABLATIONS),
    Spec("evaluate", ("evaluate", "engine", "run"),
         ("seed", "corpus", "augment", "score@all", "select@all", "train@all", "ablation@all", "file:model"),
         ignore=ENGINE_SAME + IFEVAL_FIELDS + ("evaluate.enabled", "evaluate.ablation"), when=("evaluate.enabled",)),
    Spec("ifeval", ("evaluate", "engine", "run"), ("train@all", "ablation@all", "file:model"),
         ignore=ENGINE_SAME + HELDOUT_EVAL_FIELDS + ("evaluate.enabled", "evaluate.ablation"),
         when=("evaluate.enabled", "evaluate.ifeval")),
    Spec("export", ("*",), ("seed", "train@last", "select@all", "evaluate", "ifeval"), ignore=ENGINE_SAME + RAY),
)
SPECS = {s.kind: s for s in GRAPH}


@dataclass(frozen=True)
class Planned:
    name: str  # the stage's folder, e.g. "round_01/score"
    spec: Spec
    rnd: int | None = None


def _enabled(spec: Spec, recipe: Recipe) -> bool:
    return all(_field(recipe, key) for key in spec.when)


def has_stage(recipe: Recipe, kind: str) -> bool:
    """Does a run of `recipe` have a stage of this kind (`ifeval` with evaluate.ifeval=0: no)?"""
    return _enabled(SPECS[kind], recipe)


def _field(recipe: Recipe, dotted: str) -> Any:
    obj: Any = recipe
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def adapter_stages(recipe: Recipe) -> list[str]:
    """The stages that train an adapter, in order: the backward model, then every planned model."""
    from . import layout

    return ["backward"] + [p.name for p in plan(recipe) if layout.model_name(p.name)]


def plan(recipe: Recipe) -> list[Planned]:
    """The stages of a run in the order they run: round stages grouped round by round."""
    out: list[Planned] = []
    round_specs = [s for s in GRAPH if s.rounds_from is not None]
    for spec in GRAPH:
        if spec.rounds_from is None:
            if _enabled(spec, recipe):
                out.append(Planned(spec.kind, spec))
        elif spec is round_specs[0]:
            for rnd in range(recipe.rounds + 1):
                out += [Planned(layout.stage(s.kind, rnd), s, rnd) for s in round_specs
                        if rnd >= (s.rounds_from or 0) and _enabled(s, recipe)]
    return out


def inputs(p: Planned, recipe: Recipe) -> list[str]:
    """The stages and outside files `p` reads, resolved to names ("round_00/train", "file:seed")."""
    names = {q.name for q in plan(recipe)}
    out: list[str] = []
    for ref in p.spec.inputs:
        kind, _, which = ref.partition("@")
        if kind.startswith("file:"):
            out.append(ref)
        elif kind == "ablation":
            out += [layout.ablation_stage(a) for a in layout.ABLATIONS if layout.ablation_stage(a) in names]
        elif not which:
            out += [kind] if kind in names else []
        else:
            rnds = {"prev": [(p.rnd or 0) - 1], "this": [p.rnd], "last": [recipe.rounds],
                    "all": range(recipe.rounds + 1)}[which]
            out += [n for r in rnds if r is not None and r >= 0 and (n := layout.stage(kind, r)) in names]
    return out


def config(spec: Spec, recipe: Recipe) -> dict[str, Any]:
    """The settings a stage depends on, flattened to dotted keys."""
    sections = ([f.name for f in dataclasses.fields(recipe) if dataclasses.is_dataclass(getattr(recipe, f.name))
                 or f.name == "backward_train"] + ["run"]) if spec.sections == ("*",) else list(spec.sections)
    flat: dict[str, Any] = {}
    for section in sections:
        for key, value in _section(recipe, section).items():
            flat[f"{section}.{key}"] = value
    ignored = set(spec.ignore) | set(EVERYWHERE)
    return {k: v for k, v in flat.items() if k not in ignored}


def _section(recipe: Recipe, section: str) -> dict[str, Any]:
    if section == "run":
        return {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)
                if not dataclasses.is_dataclass(getattr(recipe, f.name)) and f.name != "backward_train"}
    value = recipe.backward() if section == "backward_train" else getattr(recipe, section)
    return dataclasses.asdict(value)


def fingerprint(p: Planned, recipe: Recipe, digests: dict[str, str]) -> str:
    """`digests`: output digest of every input stage, content digest of every outside file."""
    return _hash(p.spec.kind, STAGE_VERSION, config(p.spec, recipe), [(n, digests[n]) for n in inputs(p, recipe)])


def iter_unplanned(stage_names: list[str], recipe: Recipe) -> Iterator[str]:
    """Stages in a run folder that this recipe no longer has (e.g. round_02 after rounds=1)."""
    planned = {p.name for p in plan(recipe)}
    yield from (n for n in stage_names if n not in planned)
