"""Tiny random-weight models of common architectures, built by the tests: a transformers model and
the GGUF llama.cpp's converter would make of it (float32 tensors, so llama.cpp computes what
transformers does), with the embedded model's tokenizer. What the per-architecture adapter tests
need without downloading each family's weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from humpback_lite.adapters import permute_rows

SIZE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
# transformers class -> (GGUF architecture, LoRA target modules). Mistral's GGUF is the llama layout.
ARCHS = {
    "qwen2": ("Qwen2", "qwen2", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "phi3": ("Phi3", "phi3", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
    "mistral": ("Mistral", "llama", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}


def build(kind: str, tokenizer_gguf: Path, out: Path, seed: int = 0):
    """(float32 transformers model, GGUF path) for `kind`, its vocabulary that of `tokenizer_gguf`."""
    import gguf
    import torch
    import transformers

    from humpback_lite.adapters import _arch_enum

    hf_name, arch, _ = ARCHS[kind]
    reader = gguf.GGUFReader(str(tokenizer_gguf))
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    config = getattr(transformers, f"{hf_name}Config")(vocab_size=n_vocab, rope_theta=10000.0, **SIZE)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{hf_name}ForCausalLM")(config).float().eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: give them values to map
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)

    n_head, n_kv = SIZE["num_attention_heads"], SIZE["num_key_value_heads"]
    names = gguf.get_tensor_name_map(_arch_enum(arch), SIZE["num_hidden_layers"])
    w = gguf.GGUFWriter(str(out), arch)
    w.add_context_length(SIZE["max_position_embeddings"])
    w.add_embedding_length(SIZE["hidden_size"])
    w.add_block_count(SIZE["num_hidden_layers"])
    w.add_feed_forward_length(SIZE["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(SIZE["rms_norm_eps"])
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(SIZE["hidden_size"] // n_head)
    for f in reader.fields.values():
        if f.name.startswith("tokenizer."):
            vtype = f.types[0]
            w.add_key_value(f.name, f.contents(), vtype, sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for name, t in model.state_dict().items():
        data = t.float().numpy()
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{kind}: no GGUF name for {name}")
        if arch == "llama" and name.endswith("q_proj.weight"):  # what llama.cpp's converter does
            data = permute_rows(data, n_head)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            data = permute_rows(data, n_kv)
        w.add_tensor(gguf_name, np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, out
