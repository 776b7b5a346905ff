"""RUN/report/index.html: one self-contained page (inline SVG plots, inline CSS, no scripts, no
network) showing what the loop did and whether it helped, plus a rich summary for the terminal.

Everything is read from the run's files, so a report can be rebuilt at any time
(`humpback report RUN`), also for a run that is still going or that skipped evaluation.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from . import graph, ifeval, layout
from .evaluate import curation_figures, data_stats, last_round_model, read_metrics
from .recipe import load_recipe
from .store import Run, read_jsonl, write_text

EXAMPLE_CHARS = 700


# ----------------------------------------------------------------------------- gathering


def _jsonl(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def gather(root: str | Path) -> dict[str, Any]:
    """Every figure the report shows, as plain data (also what tests check)."""
    run = Run(root)
    m = run.manifest
    recipe_path = Path(root) / "recipe.yaml"
    recipe = load_recipe(recipe_path) if recipe_path.exists() else None
    rounds = recipe.rounds if recipe else None
    # Folders of rounds the recipe no longer has (rounds lowered) are not part of this run.
    stages = {k: v for k, v in m.get("stages", {}).items()
              if rounds is None or (layout.split(k)[1] or 0) <= rounds}
    curation = curation_figures(run, rounds)
    for c in curation:
        scored = _jsonl(run.dir(layout.stage("score", c["round"])) / "scored.jsonl")
        kept_ids = {p["id"] for p in _jsonl(run.dir(layout.stage("select", c["round"])) / "curated.jsonl")}
        c["examples"] = _examples(scored, kept_ids)
    segments = _jsonl(run.dir("corpus") / "segments.jsonl")
    pairs = _jsonl(run.dir("augment") / "pairs.jsonl")
    answers: dict[str, dict[str, str]] = {}
    for a in _jsonl(run.dir("evaluate") / "answers.jsonl"):
        answers.setdefault(a["id"], {})[a["model"]] = a["answer"]
    heldout = {p["id"]: p for p in _jsonl(run.dir("seed") / "heldout.jsonl")}
    corpus_counts = (stages.get("corpus") or {}).get("counts") or {}
    return {
        "name": Path(root).name,
        "model": (m.get("model") or {}).get("name", "?"),
        "funnel": corpus_counts.get("funnel", {}),
        "pairs": len(pairs),
        "curation": curation,
        # a stage the recipe no longer has (IFEval after evaluate.ifeval=0) is left out, as rounds are
        "evaluation": read_metrics(run, recipe is None or graph.has_stage(recipe, "ifeval")),
        "answers": [{"instruction": heldout[i]["instruction"], "reference": heldout[i]["output"], **by_model}
                    for i, by_model in list(answers.items())[:3] if i in heldout],
        "data": data_stats(segments, pairs) if segments else None,
        "lengths": {"segment characters": [len(s["text"]) for s in segments],
                    "instruction characters": [len(p["instruction"]) for p in pairs]} if segments and pairs else {},
        "timings": [(k, v.get("status"), v.get("seconds")) for k, v in stages.items()],
        "recipe": recipe_path.read_text() if recipe_path.exists() else "",
        "train": {_model_name(k): (t.train_loss, t.rows) for k, v in stages.items()
                  if layout.model_name(k) or k == "backward" for t in [layout.TrainCounts.of(v.get("counts"))]},
    }


def _examples(scored: list[dict], kept_ids: set[str], n: int = 2) -> dict[str, list[dict]]:
    """Best, borderline (nearest the cutoff, kept and dropped) and rejected pairs of a round."""
    # each pair says whether selection kept it: a top-scored pair can still be dropped (a near
    # duplicate, or past max_per_source), so "best" is not "kept"
    rows = sorted(({**s, "kept": s["id"] in kept_ids} for s in scored if s.get("score") is not None),
                  key=lambda s: -s["score"])
    if not rows:
        return {}
    kept = [s for s in rows if s["id"] in kept_ids]
    dropped = [s for s in rows if s["id"] not in kept_ids]
    below = [s for s in dropped if not kept or s["score"] <= kept[-1]["score"]]  # under the cutoff, not a duplicate
    border = kept[-1:] + below[:1]
    return {"best": rows[:n], "borderline": border, "rejected": dropped[-n:][::-1]}


# ----------------------------------------------------------------------------- plots


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG sits inline


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "svg.fonttype": "none"})
    return plt


def plot_funnel(g: dict) -> str | None:
    f = g["funnel"]
    steps = [("segments found", f.get("candidates")), ("passed filters", f.get("kept")),
             ("sampled", f.get("sampled") or None), ("instructions written", g["pairs"] or None)]
    steps += [(f"kept, round {c['round']} (judge {c['judge']})", c["kept"]) for c in g["curation"]]
    steps = [(k, v) for k, v in steps if v]
    if not steps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(steps) + 0.6))
    labels = [k for k, _ in steps][::-1]
    values = [v for _, v in steps][::-1]
    bars = ax.barh(labels, values, color="#4c78a8")
    ax.bar_label(bars, padding=3)
    ax.set_xscale("log")  # thousands of segments, tens of kept pairs
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xlim(left=1, right=max(values) * 3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("items (log scale)")
    ax.set_title("The loop as a funnel")
    return _svg(fig)


def plot_scores(g: dict) -> str | None:
    rounds = [c for c in g["curation"] if c["scores"]]
    if not rounds:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(rounds), figsize=(3.4 * len(rounds) + 0.4, 2.6), sharey=True, squeeze=False)
    lo = min(min(c["scores"]) for c in rounds)
    hi = max(max(c["scores"]) for c in rounds)
    for ax, c in zip(axes[0], rounds, strict=True):
        ax.hist(c["scores"], bins=20, range=(lo, hi + 1e-9), color="#72b7b2")
        if c["cutoff"] is not None:
            ax.axvline(c["cutoff"], color="#e45756", linestyle="--", label=f"cutoff {c['cutoff']:.2f}")
            ax.legend(frameon=False, fontsize=8)
        ax.set_title(f"round {c['round']}: scored by {c['judge']}")
        ax.set_xlabel(f"{c.get('mode') or 'rubric'} score")
    axes[0][0].set_ylabel("pairs")
    return _svg(fig)


def plot_metrics(g: dict) -> str | None:
    ev = g["evaluation"]
    if not ev or not ev.get("models"):
        return None
    plt = _plt()
    names = list(ev["models"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3), gridspec_kw={"wspace": 0.3})
    nll = [ev["models"][n]["nll"] for n in names]
    a1.plot(names, nll, marker="o", color="#4c78a8")
    for x, y in zip(names, nll, strict=True):
        a1.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    a1.set_title("held-out NLL per answer token\n(lower is better)")
    width = 0.38
    xs = range(len(names))
    for off, ref, color in ((-width / 2, layout.BASE, "#4c78a8"), (width / 2, layout.SEED_MODEL, "#f58518")):
        vals = [(ev["models"][n].get(f"vs_{ref}") or {}).get("win_rate") for n in names]
        a2.bar([x + off for x in xs], [v if v is not None else 0 for v in vals], width,
               label=f"vs {ref}", color=color)
    a2.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    a2.set_xticks(list(xs), names)
    a2.set_ylim(0, 1)
    a2.set_title(f"win rate (0.5 = even)\njudge: {ev['judge']}")
    a2.legend(frameon=False, fontsize=8)
    return _svg(fig)


def plot_lengths(g: dict) -> str | None:
    if not g["lengths"]:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.4))
    for ax, (title, xs) in zip(axes, g["lengths"].items(), strict=True):
        ax.hist(xs, bins=20, color="#54a24b")
        ax.set_title(title)
        ax.set_xlabel("characters")
    return _svg(fig)


# ----------------------------------------------------------------------------- HTML

TEMPLATE = Path(__file__).resolve().parent / "templates" / "report.html"

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#666}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}
.pair{border:1px solid #ddd;border-radius:6px;padding:.6em .9em;margin:.6em 0;background:#fafafa}
.pair .q{font-weight:600}.pair pre{white-space:pre-wrap;font:13px/1.4 ui-monospace,monospace;margin:.4em 0}
.tag{display:inline-block;font-size:12px;border-radius:3px;padding:0 .4em;margin-right:.4em;background:#e8eef7}
.keep{background:#dff0d8}.drop{background:#f8e0e0}pre.recipe{background:#f6f6f6;padding:.8em;overflow:auto}
"""


def _model_name(stage: str) -> str:
    """"round_01/train" -> "M1"; "backward" -> "backward (answer -> instruction)"."""
    return layout.model_name(stage) or stage + " (answer -> instruction)"


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{v:.0%}"


def _or_dash(v: Any) -> str:
    return "-" if v is None else str(v)


def _rate_ci(v: dict) -> str | None:
    if not v:
        return None
    ci = v.get("ci")
    return _pct(v["win_rate"]) + (f" [{ci[0]:.0%}-{ci[1]:.0%}]" if ci else "")


def _wtl(v: dict) -> str | None:
    return f"{v['win']}/{v['tie']}/{v['loss']}" if v else None


def _ablation(ev: dict) -> dict | None:
    """Curated vs random vs all vs seed-only, with intervals, and a plain verdict."""
    diffs = ev.get("nll_diff") or {}
    final = last_round_model(list(ev["models"]))
    if not final or not any(a in ev["models"] for a in layout.ABLATIONS):
        return None
    rows, verdicts = [], []
    for other in [layout.SEED_MODEL, *[a for a in layout.ABLATIONS if a in ev["models"]]]:
        d = diffs.get(f"{final} - {other}")
        w = ev["models"][final].get(f"vs_{other}") or {}
        rows.append([f"{final} vs {other}", d and d["diff"], d and f"[{d['ci'][0]}, {d['ci'][1]}]", _rate_ci(w)])
        if d:
            real = d["ci"][1] < 0 or d["ci"][0] > 0
            better = "better" if d["diff"] < 0 else "worse"
            verdicts.append(f"{final} is {better} than {other} on held-out NLL"
                            + ("" if real else " by less than the noise: the interval includes zero") + ".")
    return {"final": final, "rows": rows, "verdicts": verdicts}


def _ifeval(m: dict | None) -> dict | None:
    """IFEval's four accuracies per model, differences against base and M0, and accuracy per
    instruction type (strict): which kinds of constraint the loop helped or hurt."""
    if not m or not m.get("models"):
        return None
    names = list(m["models"])
    rows = [[n, v["average"], *(ifeval.cell(v[k]) for k in ifeval.METRICS), v.get("cut_at_limit")]
            for n, v in m["models"].items()]
    diffs = [[f"{n} - {ref}", ifeval.cell(v[f"vs_{ref}"].get("average")),
              *(ifeval.cell(v[f"vs_{ref}"][k]) for k in ifeval.METRICS)]
             for ref in (layout.BASE, layout.SEED_MODEL) for n, v in m["models"].items() if f"vs_{ref}" in v]
    kinds = sorted({k for v in m["models"].values() for k in v["by_type"]})
    first = m["models"][names[0]]["by_type"]
    by_type = [[k, first[k]["n"] if k in first else "-",
                *(_or_dash((m["models"][n]["by_type"].get(k) or {}).get("strict")) for n in names)] for k in kinds]
    return {"about": ifeval.describe(m), "rows": rows, "diffs": diffs, "names": names, "by_type": by_type,
            "type_num": tuple(range(1, len(names) + 2))}


def _context(g: dict) -> dict[str, Any]:
    """The template's rows and plots, from `gather`'s figures."""
    ev = g["evaluation"]
    ctx: dict[str, Any] = {"g": g, "ev": ev, "css": CSS, "example_chars": EXAMPLE_CHARS}
    ctx["plots"] = {"metrics": plot_metrics(g), "funnel": plot_funnel(g), "scores": plot_scores(g),
                    "lengths": plot_lengths(g)}
    ctx["ifeval"] = _ifeval((ev or {}).get("ifeval"))  # its own stage: also without held-out pairs
    ctx["held_out"] = bool(ev and ev.get("models"))
    if ctx["held_out"]:
        ctx["position_bias"] = _pct(ev.get("position_bias"))
        ctx["model_rows"] = [
            [n, v["nll"], v["ppl"], _rate_ci(v.get("vs_base") or {}), _wtl(v.get("vs_base") or {}),
             _rate_ci(v.get("vs_M0") or {}), _wtl(v.get("vs_M0") or {}),
             f"{v.get('looping', '-')} / {v.get('cut_at_limit', '-')}"]
            for n, v in ev["models"].items()]
        ctx["ablation"] = _ablation(ev)
        ctx["last_model"] = last_round_model(list(ev["models"])) or list(ev["models"])[-1]
    cur = g["curation"]
    ctx["curation_rows"] = [
        [c["round"], c["judge"], c.get("mode"), c["candidates"], c["kept"], c["cutoff"], c["auc"], c.get("auc_hard"),
         _pct(c["flip_rate"]), _pct(c.get("benign_flip_rate")), c["agreement"]] for c in cur]
    names = sorted({n for c in cur for n in c.get("auc_by_signal") or {}})
    ctx["signal_head"] = ["round"] + [f"{n} AUC (mismatched / hard)" for n in names]
    ctx["signal_rows"] = [[c["round"]] + [f"{_or_dash((c['auc_by_signal'] or {}).get(n))} / "
                                          f"{_or_dash((c['auc_hard_by_signal'] or {}).get(n))}" for n in names]
                          for c in cur] if names else []
    ctx["signal_num"] = tuple(range(1, len(names) + 1))
    ctx["train_rows"] = [[k, v[0], v[1]] for k, v in g["train"].items()]
    if d := g["data"]:
        ctx["data_rows"] = [[label, *(d[key].get(k) for k in ("n", "min", "median", "mean", "max"))]
                            for label, key in (("segment characters", "segment_chars"),
                                               ("instruction characters", "instruction_chars"))]
    return ctx


def render(g: dict) -> str:
    """The report page: templates/report.html filled with `gather`'s figures."""
    import jinja2

    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE.read_text()).render(**_context(g))


def write_report(root: str | Path, g: dict[str, Any] | None = None) -> Path:
    """Build RUN/report/index.html from the run's files (or from `g`, their `gather`); returns its path."""
    out = Path(root) / "report" / "index.html"
    write_text(out, render(g or gather(root)))
    return out


def summary_table(g: dict[str, Any]):
    """A rich table of the per-model metrics and per-round curation (from `gather`), for the terminal."""
    from rich.table import Table

    t = Table(title=f"humpback report: {g['name']}")
    for col in ("model", "NLL/token", "win vs base", "win vs M0", "IFEval", "trained on (seed+curated)", "kept / candidates"):
        t.add_column(col)
    ev = (g["evaluation"] or {}).get("models", {})
    ife = ((g["evaluation"] or {}).get("ifeval") or {}).get("models", {})
    kept = {layout.round_model(c["round"]): f"{c['kept']} / {c['candidates']}" for c in g["curation"]}
    names = list(ev) or [layout.BASE] + [layout.round_model(k) for k in range(len(g["curation"]) + 1)]
    for n in names:
        v = ev.get(n, {})
        rows = g["train"].get(n, (None, None))[1]
        t.add_row(n, str(v.get("nll", "-")), _pct((v.get("vs_base") or {}).get("win_rate")) or "-",
                  _pct((v.get("vs_M0") or {}).get("win_rate")) or "-", str((ife.get(n) or {}).get("average", "-")),
                  str(rows or "-"), kept.get(n, "-"))
    return t
