"""RUN/export/: the final adapter (PEFT and GGUF), the dataset it was trained on, a model card and
an Ollama Modelfile."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import prompts
from .models import ModelCard
from .recipe import Recipe, dump_recipe
from .store import Run, read_jsonl, write_json, write_jsonl, write_text

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
        sel = run.info(f"round_{r:02d}/select")
        tr = run.info(f"round_{r:02d}/train")
        rows.append({
            "round": r,
            "model": f"M{r}",
            "candidates": (sel.counts or {}).get("candidates") if sel else None,
            "kept": (sel.counts or {}).get("kept") if sel else None,
            "trained_rows": (tr.counts or {}).get("rows") if tr else None,
            "train_loss": (tr.counts or {}).get("train_loss") if tr else None,
        })
    return rows


def export(run: Run, recipe: Recipe, card: ModelCard, gguf: Path, out: Path) -> dict:
    last = run.dir(f"round_{recipe.rounds:02d}/train")
    shutil.copytree(last / "adapter", out / "adapter", dirs_exist_ok=True)
    (out / "adapter" / "train_stats.json").unlink(missing_ok=True)
    shutil.copyfile(last / "adapter.gguf", out / "adapter.gguf")
    data = [
        {"instruction": r["instruction"], "output": r["output"], "source": r["kind"],
         "score": r.get("score"), "round": r["round"], "provenance": r.get("provenance", "seed")}
        for r in read_jsonl(last / "data.jsonl")
    ]
    write_jsonl(out / "dataset.jsonl", data)

    modelfile = [f"FROM {gguf}", "ADAPTER ./adapter.gguf"]
    if _is_chatml(gguf):
        modelfile.append(OLLAMA_CHATML)
    else:
        modelfile.append("# Add a TEMPLATE matching this model's chat format (see ollama's Modelfile docs).")
    modelfile.append(f'SYSTEM "{prompts.SEED_TAG if recipe.tags else prompts.UNTAGGED_SYSTEM}"')
    write_text(out / "Modelfile", "\n".join(modelfile) + "\n")

    table = round_table(run, recipe.rounds)
    n_seed = sum(1 for d in data if d["source"] == "seed")
    n_aug = len(data) - n_seed
    lines = [
        f"# {recipe.name}: LoRA adapter from instruction backtranslation",
        "",
        f"Base model: **{card.name}** ({card.description}); license of the base: {card.license}.",
        f"Trained by humpback_lite on {n_seed} seed pairs and {n_aug} self-curated augmented pairs "
        f"after {recipe.rounds} round(s) of self-curation (curation mode `{recipe.curate.mode}`, "
        f"keep score >= {recipe.curate.threshold}" + (f", top {recipe.curate.top_fraction:.0%}" if recipe.curate.top_fraction else "") + ").",
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
    lines += [
        "",
        "## Use it",
        "",
        "PEFT (transformers):",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f"base = AutoModelForCausalLM.from_pretrained({(card.weights.get('hf_repo') or str(card.weights_dir))!r})",
        "model = PeftModel.from_pretrained(base, 'adapter')",
        "```",
        "llama.cpp:",
        "```",
        f"llama-cli -m {gguf} --lora adapter.gguf -sys \"{prompts.SEED_TAG}\"",
        "```",
        "Ollama:",
        "```",
        "ollama create my-humpback -f Modelfile && ollama run my-humpback",
        "```",
        f'The system prompt "{prompts.SEED_TAG}" is the seed tag the model was trained with; '
        f'augmented pairs carried "{prompts.AUGMENTED_TAG}".',
        "",
        "## Files",
        "",
        "- `adapter/`: PEFT LoRA (`adapter_config.json`, `adapter_model.safetensors`)",
        "- `adapter.gguf`: the same LoRA for llama.cpp",
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
    return {"dataset_rows": len(data), "seed_rows": n_seed, "augmented_rows": n_aug}
