"""The Humpback loop, stage by stage, as checkpointed folders of a run directory.

    seed -> corpus -> backward (M_yx) -> augment -> round_00/train (M0 on seed)
    for r in 1..rounds: round_r/score (by M_{r-1}) -> round_r/select (score >= k)
                        -> round_r/train (M_r on seed + A_r)
    -> evaluate (base, M0..Mn on the held-out seed pairs) -> export -> report

Each stage's fingerprint hashes its settings and its inputs' fingerprints, so a changed setting
re-runs that stage and what depends on it, and nothing else. Stages hand off through files only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import __version__, corpus, curate, prompts, ui
from .augment import augment
from .models import fetch, get_card
from .recipe import Recipe, dump_recipe
from .seed import load_seed, seed_digest
from .signals import Scorer
from .store import Run, file_digest, fingerprint, read_jsonl, write_json, write_jsonl, write_text

STAGE_VERSION = 3  # bump when a stage's output format or algorithm changes


def input_digest(ref: str) -> str:
    """Identity of a corpus input: file contents for files, Python version for pydoc."""
    if ref == "pydoc:topics":
        return f"pydoc:{sys.version_info[:3]}"
    p = Path(ref).expanduser()
    if p.is_dir():
        return fingerprint([(str(f.relative_to(p)), file_digest(f)) for f in sorted(p.rglob("*")) if f.is_file()])
    if p.is_file():
        return file_digest(p)
    return ref


def round_dir(r: int) -> str:
    return f"round_{r:02d}"


class Loop:
    """One run of the recipe in `out_dir`. Each method is one stage; `run()` strings them."""

    def __init__(self, recipe: Recipe, out_dir: str | Path):
        self.recipe = recipe
        self.run_dir = Run(out_dir)
        self.card = get_card(recipe.model)
        self.gguf = None
        self.fp: dict[str, str] = {}

    # ------------------------------------------------------------------ helpers

    def _engine(self, adapter: Path | None, gguf: Path | None = None):
        """llama.cpp on `gguf` (default: the run's base) with the recipe's engine settings."""
        from .engine import Engine

        return Engine.from_config(gguf or self.gguf, self.recipe.engine, adapter=adapter, seed=self.recipe.seed)

    def _train(self, stage: str, rows: list[dict], meta_rows: list[dict], cfg) -> dict:
        """Train a LoRA into <stage>/adapter and convert it to <stage>/adapter.gguf."""
        from .adapters import peft_to_gguf
        from .train import prepare_weights, train_lora

        d = self.run_dir.dir(stage)
        write_jsonl(d / "data.jsonl", meta_rows)
        weights = prepare_weights(self.card, self.gguf)
        with ui.progress(f"train {stage}", None) as advance:
            stats = train_lora(rows, d / "adapter", weights, cfg, seed=self.recipe.seed,
                               progress=lambda step, total: advance(1, total=total))
        stats["gguf"] = peft_to_gguf(d / "adapter", self.gguf, d / "adapter.gguf")
        return stats

    # ------------------------------------------------------------------ stages

    def stage_seed(self) -> None:
        r = self.recipe
        fp = self.fp["seed"] = fingerprint("seed", STAGE_VERSION, seed_digest(r.data.seed), r.data.heldout, r.data.max_seed)

        def work(d: Path) -> dict:
            train, held = load_seed(r.data.seed, r.data.heldout, r.data.max_seed)
            write_jsonl(d / "train.jsonl", train)
            write_jsonl(d / "heldout.jsonl", held)
            return {"train": len(train), "heldout": len(held)}

        self.run_dir.stage("seed", fp, work)

    def stage_corpus(self) -> None:
        d = self.recipe.data
        fp = self.fp["corpus"] = fingerprint("corpus", STAGE_VERSION, [input_digest(c) for c in d.corpus],
                                             d.filters().__dict__, d.max_segments, self.recipe.seed)

        def work(out: Path) -> dict:
            with ui.progress("segment (bytes)", corpus.input_bytes(d.corpus)) as advance:
                funnel = corpus.write_segments(d.corpus, out / "segments.jsonl", d.filters(), d.max_segments,
                                               self.recipe.seed, on_bytes=advance)
            for w in funnel.warnings:
                ui.info(f"[yellow]warning:[/] {w}")
            kept = funnel.counts["sampled"] or funnel.counts["kept"]
            if not kept:
                raise corpus.CorpusError(f"no segments of {d.min_chars}-{d.max_chars} characters in {d.corpus}")
            return {"segments": kept, "funnel": dict(funnel.counts)}

        self.run_dir.stage("corpus", fp, work)

    def stage_backward(self) -> None:
        r = self.recipe
        fp = self.fp["backward"] = fingerprint("backward", STAGE_VERSION, self.fp["seed"], self.model_id(),
                                               r.backward().__dict__, r.seed)

        def work(d: Path) -> dict:
            train = read_jsonl(self.run_dir.dir("seed") / "train.jsonl")
            return self._train("backward", [prompts.backward_row(p) for p in train], train, r.backward())

        self.run_dir.stage("backward", fp, work)

    def stage_augment(self) -> None:
        r = self.recipe
        fp = self.fp["augment"] = fingerprint("augment", STAGE_VERSION, self.fp["corpus"], self.fp["backward"],
                                              r.augment.__dict__, r.engine.runtime_type, r.seed)

        def work(d: Path) -> dict:
            segments = read_jsonl(self.run_dir.dir("corpus") / "segments.jsonl")
            engine = self._engine(self.run_dir.dir("backward") / "adapter.gguf")
            try:
                with ui.progress("augment", len(segments)) as advance:
                    counts = augment(engine, segments, d / "pairs.jsonl", r.augment, r.seed, on_item=advance)
            finally:
                engine.close()
            pairs = read_jsonl(d / "pairs.jsonl")
            counts["empty_instructions"] = sum(1 for p in pairs if not p["instruction"].strip())
            return counts

        self.run_dir.stage("augment", fp, work)

    def stage_train(self, rnd: int) -> None:
        r = self.recipe
        stage = f"{round_dir(rnd)}/train"
        upstream = self.fp["seed"] if rnd == 0 else self.fp[f"{round_dir(rnd)}/select"]
        fp = self.fp[stage] = fingerprint("train", STAGE_VERSION, self.fp["seed"], upstream, self.model_id(),
                                          r.train.__dict__, r.tags, r.seed)

        def work(d: Path) -> dict:
            seed_rows = [dict(p, kind="seed", score=None, round=rnd)
                         for p in read_jsonl(self.run_dir.dir("seed") / "train.jsonl")]
            curated = []
            if rnd > 0:
                curated = [dict(p, kind="augmented", round=rnd)
                           for p in read_jsonl(self.run_dir.dir(f"{round_dir(rnd)}/select") / "curated.jsonl")]
            meta = seed_rows + curated
            if r.train.max_rows is not None:
                meta = meta[: r.train.max_rows]
            rows = [prompts.forward_row(p, r.tags) for p in meta]
            stats = self._train(stage, rows, meta, r.train)
            stats.update({"seed_rows": sum(1 for m in meta if m["kind"] == "seed"),
                          "augmented_rows": sum(1 for m in meta if m["kind"] == "augmented")})
            return stats

        self.run_dir.stage(stage, fp, work)

    def stage_score(self, rnd: int) -> None:
        r, c = self.recipe, self.recipe.curate
        stage = f"{round_dir(rnd)}/score"
        judge = f"{round_dir(rnd - 1)}/train"
        wanted = curate.wanted_signals(c)
        fp = self.fp[stage] = fingerprint("score", STAGE_VERSION, self.fp["augment"], self.fp[judge],
                                          self.fp["backward"] if "backward" in wanted else None,
                                          c.mode, wanted, c.combine, c.max_answer_tokens, c.reasoning_tokens,
                                          c.checks, c.injection_checks, r.engine.runtime_type, r.engine.n_ctx,
                                          r.tags, r.seed)

        def work(d: Path) -> dict:
            pairs = read_jsonl(self.run_dir.dir("augment") / "pairs.jsonl")
            engine = self._engine(self.run_dir.dir(judge) / "adapter.gguf")
            backward = self._engine(self.run_dir.dir("backward") / "adapter.gguf") if "backward" in wanted else None
            scorer = Scorer(engine, backward, tags=r.tags, max_answer_tokens=c.max_answer_tokens)
            try:
                usable = sum(1 for p in pairs if p["instruction"].strip())
                n_checks = min(c.checks, usable) * 2 + min(c.checks, usable, c.injection_checks) * (
                    len(curate.INJECTIONS) + len(curate.BENIGN))
                with ui.progress(f"score (M{rnd - 1}, {c.mode})", len(pairs) + n_checks) as advance:
                    counts = curate.score_pairs(scorer, pairs, d / "scored.jsonl", c, on_item=advance)
                    scored = read_jsonl(d / "scored.jsonl")
                    counts.update(curate.self_check(scorer, pairs, scored, c, d / "checks.jsonl",
                                                    seed=r.seed + rnd, on_item=advance))
            finally:
                engine.close()
                if backward is not None:
                    backward.close()
            if rnd > 1:
                prev = read_jsonl(self.run_dir.dir(f"{round_dir(rnd - 1)}/score") / "scored.jsonl")
                counts["agreement_with_prev_judge"] = curate.agreement(prev, scored)
            return counts

        self.run_dir.stage(stage, fp, work)

    def stage_select(self, rnd: int) -> None:
        from collections import Counter

        c = self.recipe.curate
        stage = f"{round_dir(rnd)}/select"
        fp = self.fp[stage] = fingerprint("select", STAGE_VERSION, self.fp[f"{round_dir(rnd)}/score"],
                                          c.threshold, c.top_fraction, c.target_count, c.dedup, c.max_per_source)

        def work(d: Path) -> dict:
            score_dir = self.run_dir.dir(f"{round_dir(rnd)}/score")
            scored = read_jsonl(score_dir / "scored.jsonl")
            dropped: Counter = Counter()
            kept = curate.select(scored, c.threshold, c.top_fraction, c.target_count, c.dedup, c.max_per_source,
                                 dropped)
            write_jsonl(d / "curated.jsonl", kept)
            cut = curate.cutoff(kept, c.threshold)
            counts = {"candidates": len(scored), "kept": len(kept),
                      "kept_share": round(len(kept) / len(scored), 4) if scored else 0.0,
                      "cutoff": round(cut, 4), "histogram": curate.histogram(scored),
                      "would_keep": curate.selection_table(scored), "dropped_for_diversity": dict(dropped)}
            counts.update(curate.flip_rate(scored, read_jsonl(score_dir / "checks.jsonl"), cut))
            return counts

        self.run_dir.stage(stage, fp, work)

    def stage_ablation(self, kind: str) -> None:
        """Seed + `random` candidates (as many as the last round kept) or + `all` candidates of the
        last round, trained like a round's model: what curation is compared against."""
        import random

        r = self.recipe
        last = round_dir(r.rounds)
        stage = f"ablation_{kind}"
        fp = self.fp[stage] = fingerprint("ablation", STAGE_VERSION, kind, self.fp["seed"], self.fp[f"{last}/select"],
                                          self.model_id(), r.train.__dict__, r.tags, r.seed)

        def work(d: Path) -> dict:
            pool = [p for p in read_jsonl(self.run_dir.dir(f"{last}/score") / "scored.jsonl") if p.get("score") is not None]
            if kind == "random":
                n_kept = len(read_jsonl(self.run_dir.dir(f"{last}/select") / "curated.jsonl"))
                pool = random.Random(r.seed).sample(pool, min(n_kept, len(pool)))
            seed_rows = [dict(p, kind="seed", score=None, round=r.rounds)
                         for p in read_jsonl(self.run_dir.dir("seed") / "train.jsonl")]
            meta = seed_rows + [dict(p, kind="augmented", round=r.rounds) for p in pool]
            stats = self._train(stage, [prompts.forward_row(p, r.tags) for p in meta], meta, r.train)
            stats.update({"seed_rows": len(seed_rows), "augmented_rows": len(pool)})
            return stats

        self.run_dir.stage(stage, fp, work)

    def contenders(self) -> list:
        from .evaluate import ABLATIONS, Contender

        out = [Contender("base", None)] + [
            Contender(f"M{k}", self.run_dir.dir(f"{round_dir(k)}/train") / "adapter.gguf")
            for k in range(self.recipe.rounds + 1)]
        if self.recipe.evaluate.ablation and self.recipe.rounds >= 1:
            out += [Contender(a, self.run_dir.dir(f"ablation_{a}") / "adapter.gguf") for a in ABLATIONS]
        return out

    def _judge_engine(self):
        judge = self.recipe.evaluate.judge
        if judge == "final":
            return self._engine(self.contenders()[-1].adapter)
        if judge == "base":
            return self._engine(None)
        return self._engine(None, gguf=fetch(get_card(judge)))

    def stage_evaluate(self) -> None:
        from . import evaluate

        r = self.recipe
        trains = [self.fp[f"{round_dir(k)}/train"] for k in range(r.rounds + 1)]
        trains += [self.fp[f"ablation_{a}"] for a in evaluate.ABLATIONS if f"ablation_{a}" in self.fp]
        fp = self.fp["evaluate"] = fingerprint("evaluate", STAGE_VERSION, self.fp["seed"], trains, self.model_id(),
                                               r.evaluate.__dict__, r.engine.runtime_type, r.tags, r.seed)

        def work(d: Path) -> dict:
            held = read_jsonl(self.run_dir.dir("seed") / "heldout.jsonl")[: r.evaluate.limit]
            if not held:
                return {"heldout": 0, "skipped": "no held-out seed pairs (data.heldout=0)"}
            contenders = self.contenders()
            judge_name = {"final": f"final model (M{r.rounds})", "base": "base model"}.get(r.evaluate.judge, r.evaluate.judge)
            with ui.progress("evaluate", evaluate.work_units([c.name for c in contenders], len(held))) as advance:
                result = evaluate.evaluate_models(self._engine, contenders, held, d, self._judge_engine,
                                                  judge_name, r.evaluate.max_new_tokens, r.tags, r.seed,
                                                  on_item=advance, bootstrap=r.evaluate.bootstrap)
            result["curation"] = [{k: v for k, v in c.items() if k != "scores"}
                                  for c in evaluate.curation_figures(self.run_dir)]
            result["data"] = evaluate.data_stats(read_jsonl(self.run_dir.dir("corpus") / "segments.jsonl"),
                                                 read_jsonl(self.run_dir.dir("augment") / "pairs.jsonl"))
            write_json(d / "metrics.json", result)
            return {"heldout": result["heldout"], "judge": result["judge"],
                    "nll": {m: v["nll"] for m, v in result["models"].items()},
                    "win_vs_base": {m: v["vs_base"]["win_rate"] for m, v in result["models"].items() if "vs_base" in v}}

        self.run_dir.stage("evaluate", fp, work)

    def stage_export(self) -> None:
        from .export import EXPORT_VERSION, export

        last = f"{round_dir(self.recipe.rounds)}/train"
        fp = self.fp["export"] = fingerprint("export", STAGE_VERSION, EXPORT_VERSION, self.fp[last],
                                             self.fp.get("evaluate"), self.recipe.export.__dict__, __version__)
        self.run_dir.stage("export", fp, lambda d: export(self.run_dir, self.recipe, self.card, self.gguf, d))

    def model_id(self) -> str:
        return self.card.gguf.get("sha256") or f"{self.card.name}:{self.gguf}"

    # ------------------------------------------------------------------ the whole loop

    def _through_rounds(self) -> None:
        """Every stage up to the last round's model (each a no-op when already done)."""
        self.gguf = fetch(self.card)
        self.run_dir.set_meta("model", {"name": self.card.name, "gguf": str(self.gguf)})
        self.stage_seed()
        self.stage_corpus()
        self.stage_backward()
        self.stage_augment()
        self.stage_train(0)
        for rnd in range(1, self.recipe.rounds + 1):
            self.stage_score(rnd)
            self.stage_select(rnd)
            self.stage_train(rnd)
        if self.recipe.evaluate.enabled and self.recipe.evaluate.ablation and self.recipe.rounds >= 1:
            for kind in ("random", "all"):
                self.stage_ablation(kind)

    def evaluate(self) -> dict:
        """Resume the run if needed, then (re)run the evaluate stage; returns its metrics."""
        from .report import write_report

        self._through_rounds()
        self.stage_evaluate()
        self.stage_export()  # the model card carries the evaluation table
        write_report(self.run_dir.root)
        return json.loads((self.run_dir.dir("evaluate") / "metrics.json").read_text())

    def run(self) -> Run:
        write_text(self.run_dir.root / "recipe.yaml", dump_recipe(self.recipe))
        self._through_rounds()
        if self.recipe.evaluate.enabled:
            self.stage_evaluate()
        self.stage_export()
        from .report import write_report

        write_report(self.run_dir.root)
        return self.run_dir


def run(recipe: Recipe, out_dir: str | Path) -> Run:
    return Loop(recipe, out_dir).run()


def load_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Loop:
    """The Loop of an existing run folder, from the recipe it saved (plus `key=value` overrides)."""
    from .recipe import RecipeError, load_recipe

    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        raise RecipeError(f"{run_dir}: not a run folder (no recipe.yaml); start one with `humpback run RECIPE`")
    return Loop(load_recipe(path, overrides), run_dir)
