"""The Humpback loop: the stage graph (graph.py) run over a run folder, stage by stage.

    seed -> corpus -> backward (M_yx) -> augment -> round_00/train (M0 on seed)
    for r in 1..rounds: round_r/score (by M_{r-1}) -> round_r/select -> round_r/train (M_r)
    -> [ablation_random, ablation_all] -> evaluate -> ifeval -> export -> report

This file is wiring: each `_<kind>` method hands one stage's input files, output folder and
config section to the function of the module that does the work (the same function the
single-stage command calls). Which stages exist, in what order, and when they rerun is graph.py's.
"""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from . import augment, corpus, curate, graph, layout, prompts, train
from .cluster import worker_engine_config
from .engines import EngineFactory, factory
from .models import check_architecture, fetch, file_key, get_card, home
from .progress import Progress, Say, quiet, silent
from .recipe import RayConfig, Recipe, dump_recipe, with_absolute_paths
from .seed import load_seed, seed_digest
from .store import (
    DataError,
    Run,
    RunLock,
    fingerprint,
    read_jsonl,
    remove_stale_temps,
    tree_digest,
    write_json,
    write_jsonl,
    write_text,
)


def input_digest(ref: str) -> str:
    """Identity of a corpus input: file contents for files and folders (remembered by size and
    mtime in the cache, so unchanged corpora are not re-read), Python version for pydoc."""
    if ref == "pydoc:topics":
        return f"pydoc:{sys.version_info[:3]}"
    p = Path(ref).expanduser()
    if p.exists():
        key = fingerprint(str(p.resolve()))
        return tree_digest(p, home() / "digests" / f"{key}.json")
    return ref


class Loop:
    """One run of the recipe in `out_dir`."""

    def __init__(self, recipe: Recipe, out_dir: str | Path, progress: Progress = silent, say: Say = quiet):
        """`progress` and `say` show the stages' progress and warnings (the CLI passes rich's)."""
        self.recipe = with_absolute_paths(recipe)
        self.progress, self.say = progress, say
        self.run_dir = Run(out_dir)
        self.card = get_card(recipe.model)
        self.gguf: Path | None = None
        self._files: dict[str, str] = {}
        self._engines: EngineFactory | None = None

    # ------------------------------------------------------------------ running stages

    @property
    def engines(self) -> EngineFactory:
        """`adapter -> Engine` on the run's base model with the recipe's engine settings."""
        if self._engines is None:
            cfg = self.recipe.engine
            if cfg.backend == "llama.cpp" and cfg.runtime_type == "auto":
                cfg = replace(cfg, runtime_type=self._auto_runtime_type())
            if cfg.executor == "ray":  # the same settings on every worker, with its own CPUs as threads
                cfg = worker_engine_config(cfg, self.recipe.ray)
            self._engines = factory(self.gguf, cfg, seed=self.recipe.seed)
        return self._engines

    def _auto_runtime_type(self) -> str:
        """What `engine.runtime_type: auto` runs in this run: chosen (measured) when the run first
        needs an engine and kept in the manifest, so a resumed run, or one resumed on another
        machine, runs the same file and writes the same texts."""
        from .runtime import choose

        rec = self.run_dir.manifest.get("runtime_type")
        if rec and rec.get("model") == self.model_id():
            return rec["chosen"]
        chosen = choose(self.gguf, self.recipe.engine, on_status=self.say)["chosen"]
        self.run_dir.set_meta("runtime_type", {"model": self.model_id(), "chosen": chosen})
        return chosen

    @property
    def ray(self) -> RayConfig | None:
        """The Ray cluster that augment and score run on, if the recipe asks for one."""
        return self.recipe.ray if self.recipe.engine.executor == "ray" else None

    def _digest(self, name: str) -> str:
        """An input's identity: an outside file's content digest, or a stage's output digest."""
        if not name.startswith("file:"):
            return self.run_dir.output_digest(name)
        if name not in self._files:
            d = self.recipe.data
            self._files[name] = {"file:seed": lambda: seed_digest(d.seed),
                                 "file:corpus": lambda: fingerprint([input_digest(c) for c in d.corpus]),
                                 "file:model": self.model_id}[name]()
        return self._files[name]

    def run_stage(self, p: graph.Planned) -> bool:
        """Run one planned stage unless it is done with the same fingerprint; True if it ran."""
        fp = graph.fingerprint(p, self.recipe, {n: self._digest(n) for n in graph.inputs(p, self.recipe)})
        kind = "ablation" if p.spec.kind.startswith("ablation_") else p.spec.kind
        work = getattr(self, f"_stage_{kind}")
        return self.run_dir.stage(p.name, fp, lambda d: work(p, d))

    def model_id(self) -> str:
        # a local file without a sha256: its path, size and mtime, so replacing it reruns the stages
        if self.card.gguf.get("sha256"):
            return self.card.gguf["sha256"]
        path = Path(self.gguf or self.card.gguf_path)
        return f"{self.card.name}:{path}:{file_key(path) if path.exists() else 'missing'}"

    def _in(self, stage: str, file: str) -> Path:
        return self.run_dir.dir(stage) / file

    def _train(self, d: Path, meta: list[dict], examples: list[dict], cfg, label: str) -> dict:
        write_jsonl(d / "data.jsonl", meta)
        return train.run(examples, d / "adapter", d / "adapter.gguf", self.card, self.gguf, cfg,
                         seed=self.recipe.seed, progress=self.progress, label=label)

    def _seed_rows(self, rnd: int) -> list[dict]:
        return [dict(p, source="seed", score=None, round=rnd) for p in read_jsonl(self._in("seed", "train.jsonl"))]

    # ------------------------------------------------------------------ the stages (graph.py kinds)

    def _stage_seed(self, p: graph.Planned, d: Path) -> dict:
        data = self.recipe.data
        rows, held = load_seed(data.seed, data.heldout, data.max_seed)
        write_jsonl(d / "train.jsonl", rows)
        write_jsonl(d / "heldout.jsonl", held)
        return layout.SeedCounts(train=len(rows), heldout=len(held))

    def _stage_corpus(self, p: graph.Planned, d: Path) -> dict:
        data = self.recipe.data
        return corpus.run(data.corpus, d / "segments.jsonl", corpus.Filters.of(data), data.max_segments,
                          self.recipe.seed, progress=self.progress, warn=self.say)

    def _stage_backward(self, p: graph.Planned, d: Path) -> dict:
        rows = read_jsonl(self._in("seed", "train.jsonl"))
        return self._train(d, rows, [prompts.backward_row(r) for r in rows], self.recipe.backward(), "train backward")

    def _stage_augment(self, p: graph.Planned, d: Path) -> dict:
        return augment.run(self._in("corpus", "segments.jsonl"), d / "pairs.jsonl", self.recipe.augment,
                           self.engines, self._in("backward", "adapter.gguf"), self.recipe.seed,
                           progress=self.progress, ray=self.ray)

    def _train_rows(self, d: Path, meta: list[dict], label: str) -> dict:
        r = self.recipe
        if r.train.max_rows is not None:
            meta = meta[: r.train.max_rows]
        stats = self._train(d, meta, [prompts.forward_row(m, r.tags) for m in meta], r.train, label)
        stats.seed_rows = sum(1 for m in meta if m["source"] == "seed")
        stats.augmented_rows = sum(1 for m in meta if m["source"] == "augmented")
        return stats

    def _stage_train(self, p: graph.Planned, d: Path) -> dict:
        rnd = p.rnd or 0
        curated = [] if rnd == 0 else read_jsonl(self._in(layout.stage("select", rnd), "curated.jsonl"))
        meta = self._seed_rows(rnd) + [dict(c, source="augmented", round=rnd) for c in curated]
        return self._train_rows(d, meta, f"train {p.name}")

    def _stage_score(self, p: graph.Planned, d: Path) -> dict:
        r, rnd = self.recipe, p.rnd or 1
        pairs = read_jsonl(self._in("augment", "pairs.jsonl"))
        prev, known = [], {}
        if rnd > 1:  # the same backward model and pairs as the round before: its backward signals carry over
            prev = read_jsonl(self._in(layout.stage("score", rnd - 1), "scored.jsonl"))
            known = curate.backward_known(pairs, prev, read_jsonl(self._in(layout.stage("score", rnd - 1), "checks.jsonl")))
        # the same check sample every round (seed): the rounds' AUCs compare, and its backward values carry over
        counts = curate.run_score(pairs, d / "scored.jsonl", r.curate, self.engines,
                                  judge=self._in(layout.stage("train", rnd - 1), "adapter.gguf"),
                                  backward=self._in("backward", "adapter.gguf"), tags=r.tags,
                                  checks=d / "checks.jsonl", seed=r.seed, label=f"score with {layout.round_model(rnd - 1)}",
                                  progress=self.progress, ray=self.ray, known_backward=known)
        if rnd > 1:
            counts.agreement_with_prev_judge = curate.agreement(prev, read_jsonl(d / "scored.jsonl"))
        return counts

    def _stage_select(self, p: graph.Planned, d: Path) -> dict:
        score = self.run_dir.dir(layout.stage("score", p.rnd))
        return curate.run_select(score / "scored.jsonl", score / "checks.jsonl", d / "curated.jsonl", self.recipe.curate)

    def _stage_ablation(self, p: graph.Planned, d: Path) -> dict:
        """Seed + `random` candidates (as many as the last round kept) or + `all` candidates of the
        last round, trained like a round's model: what curation is compared against."""
        r, kind = self.recipe, p.spec.kind.removeprefix("ablation_")
        pool = [s for s in read_jsonl(self._in(layout.stage("score", r.rounds), "scored.jsonl")) if s.get("score") is not None]
        if kind == "random":
            n_kept = len(read_jsonl(self._in(layout.stage("select", r.rounds), "curated.jsonl")))
            pool = random.Random(r.seed).sample(pool, min(n_kept, len(pool)))
        meta = self._seed_rows(r.rounds) + [dict(s, source="augmented", round=r.rounds) for s in pool]
        return self._train_rows(d, meta, f"train {p.name}")

    def contenders(self) -> list:
        from .evaluate import Contender

        names = {q.name for q in graph.plan(self.recipe)}
        trained = [layout.stage("train", k) for k in range(self.recipe.rounds + 1)]
        trained += [layout.ablation_stage(a) for a in layout.ABLATIONS if layout.ablation_stage(a) in names]
        return [Contender("base", None)] + [Contender(layout.model_name(s), self._in(s, "adapter.gguf")) for s in trained]

    def _judge_engine(self):
        judge = self.recipe.evaluate.judge
        if judge == "final":
            return self.engines(self._in(layout.stage("train", self.recipe.rounds), "adapter.gguf"), batched=False)
        if judge == "base":
            return self.engines(None, batched=False)
        return factory(judge, self.recipe.engine, seed=self.recipe.seed)(None, batched=False)

    def _stage_evaluate(self, p: graph.Planned, d: Path) -> dict:
        from . import evaluate

        r = self.recipe
        held = read_jsonl(self._in("seed", "heldout.jsonl"))[: r.evaluate.limit]
        if not held:
            return layout.EvaluateCounts(skipped="no held-out seed pairs (data.heldout=0)")
        contenders = self.contenders()
        names = [c.name for c in contenders]
        judge_name = {"final": f"final model ({layout.round_model(r.rounds)})", "base": "base model"}.get(r.evaluate.judge, r.evaluate.judge)
        with self.progress("evaluate", evaluate.work_units(names, len(held))) as advance:
            result = evaluate.evaluate_models(self.engines, contenders, held, d, self._judge_engine,
                                              judge_name, r.evaluate.max_new_tokens, r.tags, r.seed,
                                              on_item=advance, bootstrap=r.evaluate.bootstrap)
        result["curation"] = [{k: v for k, v in c.items() if k != "scores"}
                              for c in evaluate.curation_figures(self.run_dir, r.rounds)]
        result["data"] = evaluate.data_stats(read_jsonl(self._in("corpus", "segments.jsonl")),
                                             read_jsonl(self._in("augment", "pairs.jsonl")))
        write_json(d / "metrics.json", result)
        return layout.EvaluateCounts(
            heldout=result["heldout"], judge=result["judge"], nll={m: v["nll"] for m, v in result["models"].items()},
            win_vs_base={m: v["vs_base"]["win_rate"] for m, v in result["models"].items() if "vs_base" in v})

    def _stage_ifeval(self, p: graph.Planned, d: Path) -> dict:
        """Every model answers IFEval's prompts (or a seeded subset), checked by its rules."""
        from . import ifeval

        r = self.recipe
        chosen = ifeval.choose(ifeval.load_prompts(), r.evaluate.ifeval, r.seed)
        ifeval.checkers()  # a missing checker or table fails now, not after the models have answered
        contenders = self.contenders()
        names = [c.name for c in contenders]
        with self.progress("IFEval", ifeval.work_units(names, len(chosen))) as advance:
            ifeval.write_answers(self.engines, contenders, chosen, d / "ifeval.jsonl",
                                 r.evaluate.ifeval_max_new_tokens, r.tags, r.seed, on_item=advance)
        result = ifeval.summarize(names, chosen, d / "ifeval.jsonl", r.evaluate.bootstrap, r.seed,
                                  r.evaluate.ifeval, r.evaluate.ifeval_max_new_tokens)
        write_json(d / "metrics.json", result)
        return layout.IFEvalCounts(prompts=result["prompts"], instructions=result["instructions"],
                                   average={m: v["average"] for m, v in result["models"].items()})

    def _stage_export(self, p: graph.Planned, d: Path) -> dict:
        from .export import export

        with self.progress("export (adapters, dataset, card" + (", merged GGUF)" if self.recipe.export.merged else ")"), None):
            return export(self.run_dir, self.recipe, self.card, self.gguf, d)

    # ------------------------------------------------------------------ the whole loop

    def states(self) -> dict[str, str]:
        """Every stage of the folder under this recipe: done, interrupted (resumes where it
        stopped), out of date (its settings or inputs changed), not run, or not in recipe (a
        round the recipe no longer has; evaluation and report leave it out)."""
        self.gguf = self.gguf or self.card.gguf_path
        out: dict[str, str] = {}
        for p in graph.plan(self.recipe):
            info = self.run_dir.info(p.name)
            names = graph.inputs(p, self.recipe)
            if info is None:
                out[p.name] = "not run"
            elif any(not n.startswith("file:") and out.get(n) != "done" for n in names):
                out[p.name] = "out of date"  # something it reads will change first
            elif graph.fingerprint(p, self.recipe, {n: self._digest(n) for n in names}) != info.fingerprint:
                out[p.name] = "out of date"
            else:
                out[p.name] = "done" if info.status == "done" else "interrupted"
        for name in graph.iter_unplanned(list(self.run_dir.manifest["stages"]), self.recipe):
            out[name] = "not in recipe"
        return out

    def run(self) -> Run:
        """Every stage of the recipe (each a no-op when done), then the report."""
        from .report import write_report

        self._check_folder()
        with RunLock(self.run_dir.root):
            # holding the lock, no one else writes here: any temp of an atomic write is a killed one's
            remove_stale_temps(self.run_dir.root)
            write_text(self.run_dir.root / "recipe.yaml", dump_recipe(self.recipe))
            if not self.card.is_cached():
                self.say(f"fetching {self.card.name} (once; then from {self.card.gguf_path})")
            self.gguf = fetch(self.card)
            if warning := check_architecture(self.card, self.gguf):
                self.say(f"warning: {warning}")
            self.run_dir.set_meta("model", {"name": self.card.name, "gguf": str(self.gguf)})
            for p in graph.plan(self.recipe):
                self.run_stage(p)
            write_report(self.run_dir.root)
        return self.run_dir

    def _check_folder(self) -> None:
        """Refuse a folder that is not this run's before writing anything into it: a non-empty one
        that no run made (its files could be the user's), or another recipe's run (whose recipe.yaml
        would be overwritten and whose stages would be redone for this one)."""
        root = self.run_dir.root
        saved = root / "recipe.yaml"
        if not (root / Run.MANIFEST).exists() and not saved.exists():
            if any(p.name != RunLock.NAME for p in root.iterdir()):
                raise DataError(f"{root} is not empty and is not a run folder (no {Run.MANIFEST}); nothing was "
                                f"changed: give a new or empty folder as --out")
            return
        if saved.exists():
            name = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("name")
            if name is not None and name != self.recipe.name:
                raise DataError(f"{root} holds the run of recipe {name!r}, not {self.recipe.name!r}; nothing was "
                                f"changed: give another --out, or name={name} to go on with that run with these settings")

    def evaluate(self) -> dict:
        """Resume the run with evaluation on; returns the evaluate stage's metrics with IFEval's
        under "ifeval" ({} when there was nothing to evaluate)."""
        from .evaluate import read_metrics

        self.recipe.evaluate.enabled = True
        self.run()
        return read_metrics(self.run_dir, graph.has_stage(self.recipe, "ifeval")) or {}


def run(recipe: Recipe, out_dir: str | Path, progress: Progress = silent, say: Say = quiet) -> Run:
    return Loop(recipe, out_dir, progress, say).run()


def load_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), progress: Progress = silent,
             say: Say = quiet) -> Loop:
    """The Loop of an existing run folder, from the recipe it saved (plus `key=value` overrides)."""
    from .recipe import RecipeError, load_recipe

    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        raise RecipeError(f"{run_dir}: not a run folder (no recipe.yaml); start one with `humpback run RECIPE`")
    return Loop(load_recipe(path, overrides), run_dir, progress, say)
