"""Shared by the adapter tests: a strong random LoRA on a transformers model, and how far llama.cpp
(base GGUF + our GGUF LoRA) agrees with transformers (base + PEFT) on the logit change it causes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from humpback_lite.engine import Engine

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nWhat is a list?<|im_end|>\n<|im_start|>assistant\n",
]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_adapter(model, out: Path, targets=TARGETS, seed: int = 0):
    """`model` (float32) wrapped in a LoRA whose B ~ N(0, 0.1): strong enough to move every logit."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, target_modules=targets))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(out)
    return peft_model


def hf_logits(peft_model, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        adapted = peft_model(torch.tensor([tokens])).logits[0, -1].float().numpy()
        with peft_model.disable_adapter():
            base = peft_model(torch.tensor([tokens])).logits[0, -1].float().numpy()
    return base, adapted


def agreement(gguf: Path, peft_model, gguf_adapter: Path, prompts=PROMPTS) -> list[dict]:
    """Per prompt: correlation of the adapter-induced logit change (llama.cpp vs transformers), both
    top tokens, the correlation of the two bases' logits, and of transformers' base vs adapted
    (an adapter too weak to move the logits would make the check meaningless)."""
    base_engine = Engine(gguf, n_ctx=512)
    lora_engine = Engine(gguf, adapter=gguf_adapter, n_ctx=512)
    out = []
    for text in prompts:
        toks = base_engine.tokenize(text)
        hf_base, hf_lora = hf_logits(peft_model, toks)
        cpp_base, cpp_lora = base_engine.next_token_logits(toks), lora_engine.next_token_logits(toks)
        out.append({"corr": float(np.corrcoef(hf_lora - hf_base, cpp_lora - cpp_base)[0, 1]),
                    "hf_top": int(hf_lora.argmax()), "cpp_top": int(cpp_lora.argmax()),
                    "bases": float(np.corrcoef(hf_base, cpp_base)[0, 1]),
                    "hf_self": float(np.corrcoef(hf_lora, hf_base)[0, 1])})
    base_engine.close()
    lora_engine.close()
    return out


def merge_agreement(gguf: Path, adapter_gguf: Path, merged_gguf: Path, prompts=PROMPTS) -> list[tuple[float, int, int]]:
    """Correlation of the adapter-induced logit change, merged file vs base + runtime LoRA."""
    base = Engine(gguf, n_ctx=512)
    lora = Engine(gguf, adapter=adapter_gguf, n_ctx=512)
    merged = Engine(merged_gguf, n_ctx=512)
    out = []
    for text in prompts:
        toks = base.tokenize(text)
        b, a, m = base.next_token_logits(toks), lora.next_token_logits(toks), merged.next_token_logits(toks)
        out.append((float(np.corrcoef(m - b, a - b)[0, 1]), int(a.argmax()), int(m.argmax())))
    for e in (base, lora, merged):
        e.close()
    return out
