"""llama.cpp(base GGUF + our GGUF LoRA) must move the logits the way transformers(base + PEFT) does.

The adapter is random and strong (lora_B ~ N(0, 0.1)), so it changes the logits a lot and the test
can fail: with the q/k row permutation left out, the correlation of the logit changes drops to
~0.85 (measured), below the 0.95 bar. Tolerance: Pearson correlation >= 0.95 of the adapter-induced
logit change (adapted - base) over the full vocabulary, per prompt, and the same top-1 token.
The residual gap comes from llama.cpp quantizing activations for its Q4_1 matmuls and from the
bf16 copy of the weights transformers loads.
"""

import pytest
from lora_check import agreement, merge_agreement, random_adapter

from humpback_lite import adapters
from humpback_lite.adapters import AdapterError, peft_to_gguf


@pytest.fixture(scope="module")
def llama_adapter(hf_weights, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("adapter") / "peft"
    model = AutoModelForCausalLM.from_pretrained(hf_weights, dtype=torch.float32)
    return random_adapter(model, out), out


def test_gguf_lora_in_llamacpp_matches_peft_in_transformers(model_gguf, llama_adapter, tmp_path):
    peft_model, peft_dir = llama_adapter
    info = peft_to_gguf(peft_dir, model_gguf, tmp_path / "adapter.gguf")
    assert info["tensors"] == 30 * 7 and info["rank"] == 8 and info["alpha"] == 16
    for got in agreement(model_gguf, peft_model, tmp_path / "adapter.gguf"):
        assert got["hf_self"] < 0.97, "adapter too weak to make the test meaningful"
        assert got["corr"] >= 0.95
        assert got["hf_top"] == got["cpp_top"]


def test_without_the_qk_permutation_the_adapter_disagrees(model_gguf, llama_adapter, tmp_path, monkeypatch):
    peft_model, peft_dir = llama_adapter
    monkeypatch.setattr(adapters, "permute_rows", lambda w, n_head: w)
    peft_to_gguf(peft_dir, model_gguf, tmp_path / "unpermuted.gguf")
    corrs = [got["corr"] for got in agreement(model_gguf, peft_model, tmp_path / "unpermuted.gguf")]
    assert min(corrs) < 0.95


def test_adapter_for_another_base_is_refused(model_gguf, tmp_path):
    import json

    import torch
    from safetensors.torch import save_file

    d = tmp_path / "wrong"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{key}.lora_A.weight": torch.zeros(2, 999), f"{key}.lora_B.weight": torch.zeros(576, 2)},
              str(d / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="blk.0.attn_q.weight: adapter is 576x999, base is 576x576"):
        peft_to_gguf(d, model_gguf, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_merged_gguf_gives_the_logits_of_base_plus_adapter(model_gguf, llama_adapter, tmp_path):
    # Tolerance: correlation >= 0.95 of the adapter-induced logit change and the same top-1 token
    # (measured 0.986-0.99 with Q8_0 merged tensors; the rest is Q8_0 rounding of the merged weights).
    _, peft_dir = llama_adapter
    peft_to_gguf(peft_dir, model_gguf, tmp_path / "adapter.gguf")
    info = adapters.merge_gguf(model_gguf, tmp_path / "adapter.gguf", tmp_path / "merged.gguf", "Q8_0")
    assert info["merged_tensors"] == 30 * 7 and info["types"] == {"Q8_0": 210}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.gguf", "merged.gguf"]  # no float32 leftovers
    for corr, lora_top, merged_top in merge_agreement(model_gguf, tmp_path / "adapter.gguf", tmp_path / "merged.gguf"):
        assert corr >= 0.95
        assert merged_top == lora_top


def test_merging_back_into_4_bit_rounds_the_adapter_away(model_gguf, llama_adapter, tmp_path):
    # Why export.merged_type defaults to Q8_0: re-quantizing W + BA to the base's Q4_1 loses
    # most of the change (measured correlation 0.4-0.5).
    _, peft_dir = llama_adapter
    peft_to_gguf(peft_dir, model_gguf, tmp_path / "adapter.gguf")
    info = adapters.merge_gguf(model_gguf, tmp_path / "adapter.gguf", tmp_path / "merged.gguf", "base")
    assert info["types"] == {"Q4_1": 210}
    corrs = [c for c, *_ in merge_agreement(model_gguf, tmp_path / "adapter.gguf", tmp_path / "merged.gguf")]
    assert max(corrs) < 0.8


def test_merge_writes_k_quants_through_llama_cpps_quantizer(model_gguf, llama_adapter, tmp_path):
    # Q6_K needs rows of 256 values: SmolLM2's 1536-wide MLP rows take it, its 576-wide rows fall back
    # to Q8_0 as llama-quantize does; the untouched tensors keep their bytes.
    import gguf

    _, peft_dir = llama_adapter
    peft_to_gguf(peft_dir, model_gguf, tmp_path / "adapter.gguf")
    info = adapters.merge_gguf(model_gguf, tmp_path / "adapter.gguf", tmp_path / "merged.gguf", "Q6_K")
    assert info["types"] == {"Q6_K": 30, "Q8_0": 180}
    base = {t.name: bytes(t.data) for t in gguf.GGUFReader(str(model_gguf)).tensors if "blk" not in t.name}
    merged = {t.name: bytes(t.data) for t in gguf.GGUFReader(str(tmp_path / "merged.gguf")).tensors if "blk" not in t.name}
    assert merged == base
    for corr, lora_top, merged_top in merge_agreement(model_gguf, tmp_path / "adapter.gguf", tmp_path / "merged.gguf"):
        assert corr >= 0.95 and merged_top == lora_top


def test_merge_refuses_a_file_that_is_not_an_adapter(model_gguf, tmp_path):
    with pytest.raises(AdapterError, match="not a GGUF LoRA adapter"):
        adapters.merge_gguf(model_gguf, model_gguf, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
