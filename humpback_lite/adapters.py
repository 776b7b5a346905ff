"""PEFT LoRA -> GGUF LoRA, written with gguf-py, so llama.cpp applies the adapter to a quantized base.

Why our own converter: llama.cpp's `convert_lora_to_gguf.py` is a script inside its source tree
(not installable), and Unsloth's GGUF export clones and builds llama.cpp at run time, which fails
offline. The format is small: `general.type=adapter`, `adapter.type=lora`, `adapter.lora.alpha`,
and per adapted weight `<gguf name>.weight.lora_a` (r x in) and `.lora_b` (out x r).

The one subtlety: llama-architecture GGUFs store the rows of attn_q/attn_k permuted for llama.cpp's
RoPE layout (transformers un-permutes them when it loads a GGUF). lora_B's rows map onto those
rows, so lora_B of q and k gets the same permutation; without it the adapted model disagrees
with PEFT (measured logit correlation 0.56 vs 0.99).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .models import gguf_header
from .store import atomic_path


class AdapterError(ValueError):
    pass


def gguf_model_info(path: str | Path) -> dict[str, Any]:
    """Architecture and attention shape of a base GGUF (read without loading tensors)."""
    header = gguf_header(path)

    def field(key: str) -> Any:
        return header.metadata.get(key)

    arch = field("general.architecture")
    if arch is None:
        raise AdapterError(f"{path}: no general.architecture in GGUF")
    return {
        "arch": arch,
        "n_head": field(f"{arch}.attention.head_count"),
        "n_head_kv": field(f"{arch}.attention.head_count_kv") or field(f"{arch}.attention.head_count"),
        "n_blocks": field(f"{arch}.block_count"),
        "file_type": field("general.file_type"),
        "tensors": {name: shape for name, (shape, _) in header.tensors.items()},
    }


def check_adapter(adapter: str | Path, base: str | Path) -> None:
    """Refuse a GGUF LoRA that does not fit `base` before llama.cpp sees it: llama.cpp 0.3.36 loads
    one whose shapes belong to another model and then crashes in its first decode (measured)."""
    import gguf

    reader = gguf.GGUFReader(str(adapter))
    arch_field = reader.fields.get("general.architecture")
    info = gguf_model_info(base)
    if arch_field is not None and arch_field.contents() != info["arch"]:
        raise AdapterError(f"{adapter}: a LoRA for a {arch_field.contents()} model, the base {Path(base).name} "
                           f"is {info['arch']} (made for another base model?)")
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    for name, a in shapes.items():
        if not name.endswith(".lora_a"):
            continue
        target = name.removesuffix(".lora_a")
        b = shapes.get(target + ".lora_b")
        base_shape = info["tensors"].get(target)
        if b is None or base_shape is None:
            raise AdapterError(f"{adapter}: {target} " + ("has no lora_b" if b is None else
                               f"is not in the base {Path(base).name} (made for another base model?)"))
        # GGUF order (ne0, ne1): base (in, out), lora_a (in, r), lora_b (r, out)
        if (a[0], b[1]) != base_shape[:2] or a[1] != b[0]:
            raise AdapterError(f"{adapter}: {target} is {base_shape[1]}x{base_shape[0]} in {Path(base).name}, "
                               f"the LoRA is for {b[1]}x{a[0]} (made for another base model?)")


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """The row order llama.cpp's converter gives q/k projections for the llama architecture
    (each head's two rotary halves interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _arch_enum(arch: str):
    import gguf

    for k, v in gguf.MODEL_ARCH_NAMES.items():
        if v == arch:
            return k
    raise AdapterError(f"architecture {arch!r} is unknown to gguf-py")


def _read_peft(adapter_dir: Path) -> tuple[int, float, dict, Path]:
    """A PEFT LoRA folder's rank, llama.cpp-scaled alpha, tensors and weights file."""
    from safetensors.torch import load_file  # torch reads bf16, which numpy cannot

    cfg_path = adapter_dir / "adapter_config.json"
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not cfg_path.exists() or not weights_path.exists():
        raise AdapterError(f"{adapter_dir}: not a PEFT adapter (needs adapter_config.json and adapter_model.safetensors)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{adapter_dir}: only LoRA adapters convert (peft_type={cfg.get('peft_type')})")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise AdapterError(f"{adapter_dir}: per-layer rank/alpha patterns are not supported")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):
        alpha = alpha * math.sqrt(r)  # rsLoRA scales by alpha/sqrt(r); llama.cpp by alpha/r
    return r, alpha, load_file(str(weights_path)), weights_path


def peft_to_gguf(adapter_dir: str | Path, base_gguf: str | Path, out: str | Path) -> dict[str, Any]:
    """Convert a PEFT LoRA folder to a GGUF LoRA for `base_gguf`. Returns a summary."""
    import gguf

    r, alpha, tensors, weights_path = _read_peft(Path(adapter_dir))
    info = gguf_model_info(base_gguf)
    arch = info["arch"]
    name_map = gguf.get_tensor_name_map(_arch_enum(arch), int(info["n_blocks"]))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        if ".lora_A." in key:
            module, part = key.split(".lora_A.")[0], "a"
        elif ".lora_B." in key:
            module, part = key.split(".lora_B.")[0], "b"
        else:
            raise AdapterError(f"{weights_path}: unexpected tensor {key} (only LoRA A/B weights convert)")
        hf_name = module.removeprefix("base_model.model.")
        gguf_name = name_map.get_name(hf_name + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise AdapterError(f"{key}: no GGUF name for module {hf_name}")
        pairs.setdefault(gguf_name, {})[part] = value.float().numpy()

    writer_summary = []
    with atomic_path(out, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for name in sorted(pairs):
            ab = pairs[name]
            if "a" not in ab or "b" not in ab:
                raise AdapterError(f"{name}: LoRA A or B missing")
            a, b = ab["a"], ab["b"]
            base_shape = info["tensors"].get(name)
            if base_shape is None:
                raise AdapterError(f"{name}: the base GGUF has no such tensor (wrong base model?)")
            # GGUF shapes are (in, out); PEFT's A is (r, in) and B is (out, r).
            if base_shape != (a.shape[1], b.shape[0]):
                raise AdapterError(f"{name}: adapter is {b.shape[0]}x{a.shape[1]}, base is {base_shape[1]}x{base_shape[0]}")
            if arch == "llama" and name.endswith("attn_q.weight"):
                b = permute_rows(b, int(info["n_head"]))
            elif arch == "llama" and name.endswith("attn_k.weight"):
                b = permute_rows(b, int(info["n_head_kv"]))
            writer.add_tensor(name + ".lora_a", np.ascontiguousarray(a))
            writer.add_tensor(name + ".lora_b", np.ascontiguousarray(b))
            writer_summary.append(name)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"tensors": len(writer_summary), "rank": r, "alpha": alpha, "arch": arch}


def _copy_fields(reader, writer) -> None:
    import gguf

    for f in reader.fields.values():
        # GGUF.* are the reader's virtual fields; the writer writes general.architecture itself.
        if f.name.startswith("GGUF.") or f.name == gguf.Keys.General.ARCHITECTURE:
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, f.contents(), vtype, sub_type=sub)


def merge_gguf(base_gguf: str | Path, adapter_gguf: str | Path, out: str | Path, out_type: str = "base") -> dict[str, Any]:
    """Fold a GGUF LoRA into its base: W' = W + alpha/r * B @ A for every adapted tensor.

    The merged tensors are computed in float32 (gguf-py dequantizes the base's) and handed to
    llama.cpp's own quantizer (`runtime.quantize_gguf`), which writes them as `out_type`: "base"
    keeps each tensor's own type (Q4_1 for the embedded model), or a ggml type name (Q8_0, Q4_K,
    F16, ...). Every other tensor keeps its type and bytes; the metadata is copied."""
    import gguf
    from gguf import GGMLQuantizationType as QT

    from .runtime import quantize_gguf

    base = gguf.GGUFReader(str(base_gguf))
    lora = _read_lora(gguf.GGUFReader(str(adapter_gguf)), adapter_gguf, _field(base, "general.architecture"))
    if missing := sorted(set(lora) - {t.name for t in base.tensors}):
        raise AdapterError(f"{adapter_gguf}: the base has no tensor {missing[0]} (wrong base model?)")

    targets = {t.name: int(t.tensor_type if out_type == "base" or t.name not in lora else QT[out_type])
               for t in base.tensors}
    with tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".merge-") as tmp:
        f32 = Path(tmp) / "merged.f32.gguf"
        writer = gguf.GGUFWriter(str(f32), _field(base, "general.architecture"))
        _copy_fields(base, writer)
        for t in base.tensors:
            if t.name in lora:
                (a, b), alpha = lora[t.name]
                w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
                writer.add_tensor(t.name, w + (alpha / a.shape[0]) * (b @ a))
            else:
                writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        # The per-tensor types only apply under a quantized file type; the base's is one (or Q8_0).
        ftype = _field(base, "general.file_type")
        quantize_gguf(f32, Path(out), ftype if ftype not in (None, 0, 1, 32) else 7, targets)
    written = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    types: dict[str, int] = {}
    for name in lora:
        types[written[name]] = types.get(written[name], 0) + 1
    return {"merged_tensors": len(lora), "types": types, "bytes": Path(out).stat().st_size}


def _field(reader, key: str) -> Any:
    f = reader.fields.get(key)
    return f.contents() if f is not None else None


def _read_lora(reader, path: str | Path, arch: str) -> dict[str, tuple[tuple[np.ndarray, np.ndarray], float]]:
    """A GGUF LoRA's (A, B) per base tensor name, and its alpha; checked against the base's arch."""
    if _field(reader, "general.type") != "adapter" or _field(reader, "adapter.type") != "lora":
        raise AdapterError(f"{path}: not a GGUF LoRA adapter")
    if _field(reader, "general.architecture") != arch:
        raise AdapterError(f"{path}: adapter is for {_field(reader, 'general.architecture')}, base is {arch}")
    alpha = float(_field(reader, "adapter.lora.alpha"))
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        name, _, part = t.name.rpartition(".lora_")
        parts.setdefault(name, {})[part] = np.asarray(t.data, dtype=np.float32)
    return {name: ((ab["a"], ab["b"]), alpha) for name, ab in parts.items()}
