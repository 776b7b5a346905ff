"""The stage graph and the run folder's names: pure data, tested without a model."""

from __future__ import annotations

import ast
import copy
import dataclasses
from pathlib import Path

import pytest

from humpback_lite import graph, layout
from humpback_lite.recipe import AugmentConfig, Recipe, TrainConfig

PKG = Path(__file__).resolve().parent.parent / "humpback_lite"


def _leaves(obj, prefix=""):
    """(dotted key, owner object, field name) for every scalar/list field of the recipe tree."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", obj, f.name


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-x"
    if isinstance(value, list):
        return [*value, "x"]
    return 1  # None


def _configs(recipe: Recipe) -> dict[str, dict]:
    return {s.kind: graph.config(s, recipe) for s in graph.GRAPH}


def test_every_recipe_field_reruns_some_stage_unless_declared_inert():
    base = Recipe()
    before = _configs(base)
    inert = set(graph.EVERYWHERE) | set(graph.ENGINE_SAME) | set(graph.RAY)
    structural = {w for s in graph.GRAPH for w in s.when} | {"run.rounds"}
    for key, _, _ in _leaves(base):
        changed = copy.deepcopy(base)
        owner = changed
        *path, name = key.split(".")
        for part in path:
            owner = getattr(owner, part)
        new = TrainConfig(lora_r=3) if key == "backward_train" else _other(getattr(owner, name))
        setattr(owner, name, new)
        rerun = {k for k, cfg in _configs(changed).items() if cfg != before[k]}
        top = "run." + key if not path else key
        if top in structural:  # decides which stages exist (evaluate.ifeval: also how many prompts)
            assert [p.name for p in graph.plan(changed)] != [p.name for p in graph.plan(base)] or rerun, key
        elif top in inert:
            assert rerun <= {"export"}, f"{key} is declared inert but reruns {rerun}"
        else:
            assert rerun, f"changing {key} reruns no stage: a stage would keep stale results"


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("data.min_chars", 500, {"corpus"}),
    ("data.heldout", 5, {"seed"}),
    ("engine.n_ctx", 4096, {"augment", "score", "evaluate", "ifeval"}),
    ("evaluate.ifeval", 50, {"ifeval"}),  # more IFEval keeps the held-out answers and judgments
    ("evaluate.ifeval_max_new_tokens", 256, {"ifeval"}),
    ("evaluate.judge", "base", {"evaluate"}),  # a new judge keeps IFEval's answers
    ("evaluate.bootstrap", 500, {"evaluate", "ifeval"}),
    ("engine.n_threads", 1, set()),
    ("curate.top_fraction", 0.5, {"select"}),
    ("curate.mode", "pmi", {"score", "select"}),
    ("train.lora_r", 8, {"train", "ablation_random", "ablation_all", "backward"}),
    ("tags", False, {"score", "train", "ablation_random", "ablation_all", "evaluate", "ifeval"}),
])
def test_a_setting_reruns_exactly_the_stages_that_read_it(key, value, expected):
    base = Recipe()
    changed = copy.deepcopy(base)
    owner = changed if "." not in key else getattr(changed, key.split(".")[0])
    setattr(owner, key.split(".")[-1], value)
    before, after = _configs(base), _configs(changed)
    assert {k for k in before if before[k] != after[k]} - {"export"} == expected


def test_a_new_field_in_a_section_reruns_its_stage_without_touching_fingerprint_code():
    @dataclasses.dataclass
    class Extended(AugmentConfig):
        style: str = "plain"

    a, b = Recipe(), Recipe()
    a.augment, b.augment = Extended(), Extended(style="terse")
    spec = graph.SPECS["augment"]
    assert graph.config(spec, a) != graph.config(spec, b)


def test_plan_runs_rounds_in_order_and_optional_stages_only_when_asked():
    r = Recipe(rounds=2)
    names = [p.name for p in graph.plan(r)]
    assert names == ["seed", "corpus", "backward", "augment", "round_00/train", "round_01/score", "round_01/select",
                     "round_01/train", "round_02/score", "round_02/select", "round_02/train", "evaluate", "ifeval",
                     "export"]
    r.evaluate.ablation = True
    assert [p.name for p in graph.plan(r)][-5:] == ["ablation_random", "ablation_all", "evaluate", "ifeval", "export"]
    r.evaluate.ifeval = 0
    assert [p.name for p in graph.plan(r)][-2:] == ["evaluate", "export"]
    r.evaluate.enabled = False
    assert [p.name for p in graph.plan(r)][-2:] == ["round_02/train", "export"]


def test_round_inputs_resolve_to_the_previous_model_and_this_rounds_selection():
    r = Recipe(rounds=2)
    by_name = {p.name: p for p in graph.plan(r)}
    assert graph.inputs(by_name["round_02/score"], r) == ["augment", "round_01/train", "backward", "round_01/score",
                                                          "file:model"]
    assert graph.inputs(by_name["round_01/score"], r) == ["augment", "round_00/train", "backward", "file:model"]
    assert graph.inputs(by_name["round_00/train"], r) == ["seed", "file:model"]
    assert graph.inputs(by_name["round_01/train"], r) == ["seed", "round_01/select", "file:model"]


def test_fingerprint_follows_input_digests():
    r = Recipe()
    p = next(q for q in graph.plan(r) if q.name == "round_01/select")
    assert graph.fingerprint(p, r, {"round_01/score": "a"}) == graph.fingerprint(p, r, {"round_01/score": "a"})
    assert graph.fingerprint(p, r, {"round_01/score": "a"}) != graph.fingerprint(p, r, {"round_01/score": "b"})


def test_stages_of_rounds_the_recipe_no_longer_has_are_unplanned():
    names = [p.name for p in graph.plan(Recipe(rounds=2))]
    assert list(graph.iter_unplanned(names, Recipe(rounds=1))) == ["round_02/score", "round_02/select",
                                                                   "round_02/train"]


def test_layout_names_round_trip():
    assert layout.stage("score", 1) == "round_01/score"
    assert layout.split("round_12/train") == ("train", 12)
    assert layout.split("corpus") == ("corpus", None)
    assert layout.model_name("round_03/train") == "M3" and layout.model_stage("M3") == "round_03/train"
    assert layout.model_name("ablation_random") == "random" and layout.model_stage("random") == "ablation_random"
    assert layout.model_name("backward") is None and layout.model_stage("base") is None
    assert layout.round_model(12) == "M12" and layout.model_round("M12") == 12
    assert layout.model_round("base") is None and layout.model_round("M1x") is None
    assert layout.rounds(["round_02/score", "round_01/score", "round_01/select", "seed"], "score") == [1, 2]
    with pytest.raises(ValueError):
        layout.stage("score")


def _imports(module: str) -> set[str]:
    """Every humpback_lite module `module` imports, at the top or inside functions."""
    tree = ast.parse((PKG / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
    return out


STAGE_MODULES = {"corpus", "augment", "curate", "signals", "train", "adapters", "evaluate", "export", "report",
                 "loop", "engine", "engines", "chat"}


@pytest.mark.parametrize("module", ["recipe", "store", "models", "layout", "graph", "prompts", "seed", "readers",
                                    "progress", "hardware"])
def test_foundations_know_no_stage(module):
    assert not _imports(module) & STAGE_MODULES, _imports(module) & STAGE_MODULES


@pytest.mark.parametrize("module", sorted(STAGE_MODULES | {"cluster", "remote", "runtime"}))
def test_no_stage_reaches_up_to_the_terminal(module):
    # progress bars and warnings are handed in (`progress.Progress`, `progress.Say`) by the CLI
    assert "ui" not in _imports(module)


def test_cli_neither_builds_an_engine_nor_trains_directly():
    # the CLI parses and prints; engines come from engines.py, training from a stage function
    assert "engine" not in _imports("cli")
    tree = ast.parse((PKG / "cli.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not names & {"Engine", "train_lora", "peft_to_gguf", "prepare_weights", "Scorer"}


def test_model_cards_know_no_llama_cpp():
    # models.py: cards, downloads and GGUF headers; llama.cpp's runtime lives in the engine layer
    source = (PKG / "models.py").read_text()
    assert "llama_cpp" not in source and "crashguard" not in _imports("models")
