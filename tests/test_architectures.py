"""Adapters for every tested architecture (models.TESTED_ARCHITECTURES): llama.cpp with our GGUF LoRA
must move the logits the way transformers with the PEFT adapter does, and the merged GGUF must be
base + LoRA. qwen2, phi3 (fused qkv and gate_up) and mistral (the llama layout, q/k rows permuted)
are tiny random models the tests build with float32 tensors, so the two libraries compute the same
numbers: measured correlation of the logit change >= 0.9999999 for each, the bar is 0.9999. Gemma 3
is the real 270M base (K-quants, 262k vocabulary, no chat template)."""

from pathlib import Path

import numpy as np
import pytest
import tiny_models
from click.testing import CliRunner
from fakes import write_gguf
from lora_check import agreement, merge_agreement, random_adapter

from humpback_lite.adapters import merge_gguf, peft_to_gguf
from humpback_lite.cli import main
from humpback_lite.models import ModelCard, ModelError, check_architecture

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", sorted(tiny_models.ARCHS))
def test_adapter_and_merge_agree_with_transformers_for(kind, model_gguf, tmp_path):
    model, gguf = tiny_models.build(kind, model_gguf, tmp_path / "base.gguf")
    peft = random_adapter(model, tmp_path / "peft", tiny_models.ARCHS[kind][2])
    info = peft_to_gguf(tmp_path / "peft", gguf, tmp_path / "adapter.gguf")
    assert info["arch"] == tiny_models.ARCHS[kind][1] and info["tensors"] == 2 * len(tiny_models.ARCHS[kind][2])
    for got in agreement(gguf, peft, tmp_path / "adapter.gguf"):
        assert got["bases"] > 0.9999, "the built GGUF is not the transformers model"
        assert got["hf_self"] < 0.97, "adapter too weak to make the test meaningful"
        assert got["corr"] > 0.9999 and got["hf_top"] == got["cpp_top"]
    merge_gguf(gguf, tmp_path / "adapter.gguf", tmp_path / "merged.gguf", "F32")
    for corr, lora_top, merged_top in merge_agreement(gguf, tmp_path / "adapter.gguf", tmp_path / "merged.gguf"):
        assert corr > 0.9999 and lora_top == merged_top


@pytest.fixture(scope="module")
def gemma(hb_home):
    from humpback_lite.models import fetch, get_card
    from humpback_lite.train import prepare_weights

    card = get_card("gemma3-270m")
    gguf = fetch(card)
    return card, gguf, prepare_weights(card, gguf)


def test_gemma3_base_adapter_and_merge_agree_with_transformers(gemma, tmp_path):
    # Checked on the GGUF's F32 copy (the file's weights exactly): the conversion, not llama.cpp's
    # kernels. Measured there: correlation 0.998-0.9996, the same top token for each prompt. On the
    # Q4_K_M file itself the K-quant kernels (8-bit activations) under this deliberately huge random
    # adapter give 0.93-0.96 and other top tokens, while the two bases alone agree to 0.975-0.998.
    import torch
    from transformers import AutoModelForCausalLM

    from humpback_lite.runtime import runtime_gguf

    _, gguf, weights = gemma
    exact = runtime_gguf(gguf, "f32")
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    peft = random_adapter(model, tmp_path / "peft")
    assert peft_to_gguf(tmp_path / "peft", gguf, tmp_path / "adapter.gguf")["tensors"] == 18 * 7
    for got in agreement(exact, peft, tmp_path / "adapter.gguf"):
        assert got["hf_self"] < 0.97, "adapter too weak to make the test meaningful"
        assert got["corr"] >= 0.99 and got["hf_top"] == got["cpp_top"]
    merge_gguf(exact, tmp_path / "adapter.gguf", tmp_path / "merged.gguf", "F32")
    for corr, lora_top, merged_top in merge_agreement(exact, tmp_path / "adapter.gguf", tmp_path / "merged.gguf"):
        assert corr > 0.9999 and lora_top == merged_top


def test_gemma3_base_is_prompted_and_trained_in_the_same_turns(gemma):
    from transformers import AutoTokenizer

    from humpback_lite import prompts
    from humpback_lite.engine import Engine
    from humpback_lite.train import fit_rows

    _, gguf, weights = gemma
    tok = AutoTokenizer.from_pretrained(weights)
    row = prompts.forward_row({"instruction": "Explain lists.", "output": "Lists hold items."})
    e = Engine(gguf, n_ctx=512)
    try:
        ours = e.tokenize(e.format(row["prompt"]))
        theirs = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert ours == tok(theirs, add_special_tokens=False)["input_ids"]  # the same tokens, one BOS
        assert ours[0] == tok.bos_token_id and ours.count(tok.bos_token_id) == 1
        assert e.turn_stops == ("<|im_end|>",)  # plain text to this vocabulary: generation stops on it
        trained = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        assert trained.endswith("Lists hold items.<|im_end|>\n")  # the answer ends its turn as prompts expect
        # a cut answer keeps its spelled-out end of turn (8 tokens here, not ChatML models' 2) within max_length
        answer = " ".join(f"Sentence number {i} explains one more detail of Python lists." for i in range(60))
        (fitted,) = fit_rows([prompts.forward_row({"instruction": "Explain lists.", "output": answer})], tok, 128)
        text = tok.apply_chat_template(fitted["prompt"] + fitted["completion"], tokenize=False)
        assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 128 and text.endswith("lists.<|im_end|>\n")
        text = e.generate(e.format(row["prompt"]) + "Sure", max_tokens=64, temperature=0.0)
        assert "<|im_end|>" not in text
    finally:
        e.close()


def test_an_architecture_transformers_cannot_train_is_one_line_before_any_work(tmp_path):
    gguf = write_gguf(tmp_path / "odd.gguf", lambda w: w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32)),
                      arch="rwkv6")
    with pytest.raises(ModelError, match="architecture 'rwkv6' cannot be trained here"):
        check_architecture(ModelCard(name="odd", gguf={"path": str(gguf)}), gguf)
    quickstart = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
    result = CliRunner().invoke(main, ["run", str(quickstart), f"model={gguf}", "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "cannot be trained here" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "corpus").exists()
    untested = write_gguf(tmp_path / "s.gguf", lambda w: w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32)),
                          arch="starcoder2")
    assert "not among the tested ones" in check_architecture(ModelCard(name="s", gguf={"path": str(untested)}), untested)


def test_a_hub_tokenizer_without_a_template_gets_what_the_gguf_gets(gemma, tmp_path):
    # weights from a Hub repo never pass through prepare_weights: training gives them the template by
    # the tokenizer's own BOS habit, which must match models.chat_template's reading of the GGUF
    import shutil

    from humpback_lite.models import chat_template
    from humpback_lite.recipe import TrainConfig
    from humpback_lite.train import _load

    _, gguf, weights = gemma
    hub_like = tmp_path / "hub"
    shutil.copytree(weights, hub_like)
    (hub_like / "chat_template.jinja").unlink()
    _, tok, _ = _load(str(hub_like), TrainConfig(quantize="none"), 0)
    assert tok.chat_template == chat_template(gguf)
