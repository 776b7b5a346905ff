"""LoRA fine-tuning: TRL's SFTTrainer + peft on a 4-bit (bitsandbytes nf4) base, or Unsloth's
FastLanguageModel when a CUDA GPU and the `[gpu]` extra are present.

Rows are conversational prompt/completion pairs, so TRL computes the loss on the answer tokens
only (it masks the prompt). The output is an ordinary PEFT adapter folder. Heavy imports
(torch, transformers, trl) happen inside the functions: the rest of the tool stays light.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .layout import TrainCounts
from .models import ModelCard
from .recipe import TrainConfig
from .store import atomic_dir


class TrainError(RuntimeError):
    """Training cannot start (backend unavailable, no rows); the message says what to change."""

Progress = Callable[[int, int], None]


def _hush() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    except Exception:
        pass


def prepare_weights(card: ModelCard, gguf_path: Path) -> str:
    """Trainable weights for a card: a Hub repo id, or the GGUF dequantized once by transformers
    and cached as bf16 safetensors (loading from GGUF takes ~20-40 s; safetensors ~1 s)."""
    if card.weights.get("hf_repo"):
        return card.weights["hf_repo"]
    out = card.weights_dir
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return str(out)
    _hush()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16)
    # A GGUF-loaded model refuses save_pretrained until its (de)quantizer marker is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return str(out)


def use_unsloth(cfg: TrainConfig) -> bool:
    if cfg.backend == "transformers":
        return False
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        if cfg.backend == "unsloth":
            raise TrainError("train.backend=unsloth needs a CUDA GPU; use train.backend=transformers")
        return False
    try:
        import unsloth  # noqa: F401
    except ImportError:
        if cfg.backend == "unsloth":
            raise TrainError("train.backend=unsloth: install the extra with `pip install humpback-lite[gpu]`") from None
        return False
    return True


def _load(weights: str, cfg: TrainConfig, seed: int):
    """Return (model, tokenizer, peft_config or None). Unsloth returns an already-wrapped model."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if use_unsloth(cfg):  # pragma: no cover - needs a GPU
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            weights, max_seq_length=cfg.max_length, load_in_4bit=cfg.quantize == "nf4"
        )
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=cfg.target_modules, random_state=seed,
        )
        return model, tok, None

    # Weights as safetensors only (no pickle) and no code from the model repo.
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16, "use_safetensors": True, "trust_remote_code": False}
    if cfg.quantize == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    model = AutoModelForCausalLM.from_pretrained(weights, **kwargs)
    tok = AutoTokenizer.from_pretrained(weights, trust_remote_code=False)
    peft_cfg = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules, task_type="CAUSAL_LM",
    )
    return model, tok, peft_cfg


def fit_rows(rows: list[dict[str, Any]], tok, max_length: int) -> list[dict[str, Any]]:
    """Make prompt + completion fit in max_length tokens without losing the end of the turn.

    A row's `shrink` text (the answer inside a backward prompt) is shortened first. A completion
    that still does not fit is cut at its last sentence or paragraph end that fits, so the row keeps
    its end-of-turn token: TRL would cut from the right, and a model trained on answers that never
    end learns to ramble to the token limit (seen as looping answers after curation rounds)."""
    out = []
    for r in rows:
        prompt_text = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
        n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
        answer = r["completion"][0]["content"]
        comp_ids = tok(answer, add_special_tokens=False)["input_ids"]
        n_comp = len(comp_ids) + 2  # + end-of-turn and newline
        shrink = r.get("shrink")
        if shrink and n_prompt + n_comp > max_length:
            ids = tok(shrink, add_special_tokens=False)["input_ids"]
            short = tok.decode(ids[: max(16, len(ids) - (n_prompt + n_comp - max_length) - 8)])
            r = {**r, "prompt": [dict(m, content=m["content"].replace(shrink, short)) for m in r["prompt"]]}
            prompt_text = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
            n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
        room = max_length - n_prompt - 2
        if room <= 0:
            continue  # the prompt alone fills max_length: no answer token would be trained on
        if n_comp - 2 > room:
            r = {**r, "completion": [dict(r["completion"][0], content=_cut_at_sentence(tok.decode(comp_ids[:room])))]}
        out.append({"prompt": r["prompt"], "completion": r["completion"]})
    return out


def _cut_at_sentence(text: str) -> str:
    """`text` up to its last paragraph or sentence end, if that keeps at least half of it."""
    ends = [text.rfind(m) for m in ("\n\n", ". ", ".\n", "? ", "! ")]
    end = max(ends)
    if end < len(text) // 2:
        return text.rstrip()
    return text[: end + 1].rstrip()


def train_lora(
    rows: list[dict[str, Any]],
    out_dir: str | Path,
    weights: str,
    cfg: TrainConfig,
    seed: int = 0,
    progress: Progress | None = None,
) -> TrainCounts:
    """Fine-tune a LoRA on `rows` ({"prompt": [messages], "completion": [assistant message]})
    and write the PEFT adapter to `out_dir` atomically. Returns training statistics."""
    if not rows:
        raise TrainError("no training rows (empty seed file or nothing selected?)")
    _hush()
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTTrainer

    torch.manual_seed(seed)
    model, tok, peft_cfg = _load(weights, cfg, seed)
    fitted = fit_rows(rows, tok, cfg.max_length)
    if not fitted:
        raise TrainError(f"no row leaves room for an answer within max_length={cfg.max_length} tokens")
    ds = Dataset.from_list(fitted)

    class _Progress(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if progress:
                progress(state.global_step, state.max_steps)

    trainer = SFTTrainer(
        model=model, args=_sft_config(cfg, Path(out_dir).parent / ".trainer", seed, torch.cuda.is_available()),
        train_dataset=ds, processing_class=tok, peft_config=peft_cfg, callbacks=[_Progress()],
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar replaces the per-step dict prints
    n_tokens = sum(len(x["input_ids"]) for x in trainer.train_dataset)
    t0 = time.time()
    result = trainer.train()
    seconds = time.time() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    seen = max((float(h.get("num_tokens", 0)) for h in trainer.state.log_history), default=0.0)
    with atomic_dir(out_dir) as tmp:
        trainer.model.save_pretrained(tmp)
        stats = TrainCounts(
            rows=len(rows), steps=trainer.state.global_step,
            train_loss=round(float(result.training_loss), 4),
            first_loss=round(float(losses[0]), 4) if losses else None,
            last_loss=round(float(losses[-1]), 4) if losses else None,
            seconds=round(seconds, 1), tokens_per_second=round(seen / seconds, 1) if seen else None,
            backend="unsloth" if peft_cfg is None else "transformers",
            extra={"tokens_per_epoch": n_tokens, "quantize": cfg.quantize})
        (tmp / "train_stats.json").write_text(json.dumps(stats.to_json(), indent=2))
    del trainer, model
    _release_memory()
    return stats


def _sft_config(cfg: TrainConfig, output_dir: Path, seed: int, cuda: bool):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        warmup_steps=0,
        # Padded batches, not padding-free ones: measured on 2 cores (8 steps, batch 4), padding-free
        # gains 3 % on short forward rows but loses 10-15 % on backward rows (~330 tokens), where
        # sdpa's block-diagonal mask over the concatenated batch costs more than the padding saved.
        max_length=cfg.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not cuda,
        bf16=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        # TRL turns activation checkpointing on by default; for small models on a CPU it only
        # costs time (measured: 70 -> 130 tokens/s on SmolLM2-135M without it).
        gradient_checkpointing=cfg.gradient_checkpointing,
    )


def run(examples: list[dict[str, Any]], adapter_dir: Path, gguf_out: Path, card: ModelCard, gguf: Path,
        cfg: TrainConfig, seed: int = 0, progress=None, label: str = "train") -> TrainCounts:
    """A training stage, for the loop and `humpback train`: a LoRA on `examples` into `adapter_dir`
    (PEFT), converted into `gguf_out` for llama.cpp."""
    from . import ui
    from .adapters import peft_to_gguf

    weights = prepare_weights(card, gguf)
    with (progress or ui.progress)(label, None) as advance:
        stats = train_lora(examples, adapter_dir, weights, cfg, seed=seed,
                           progress=lambda step, total: advance(1, total=total))
    stats.extra["gguf"] = peft_to_gguf(adapter_dir, gguf, gguf_out)
    return stats


def _release_memory() -> None:
    """Hand the freed training heap back to the OS before the llama.cpp stages that follow.
    glibc keeps it otherwise (measured after a 135M training: 2.2 GB resident -> 0.7 GB)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass
