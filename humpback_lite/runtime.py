"""The GGUF that llama.cpp runs: the file as shipped, or a copy in another tensor type, chosen by
measuring this machine (`engine.runtime_type: auto`).

Why measure: the fastest type depends on the CPU more than on the model. On the AVX-512-BF16 EPYC
a BF16 copy of SmolLM2 read prompts ~2.9x faster than its Q4_1 file; on the AVX2-only EPYC BF16 is
emulated and Q8_0 read prompts fastest while Q4_1 generated fastest (docs/hardware.md).

Which copies `auto` may choose: the file itself and copies that keep its weights to within bf16
rounding, F16 and BF16. Measured on the embedded Q4_1 model (30 held-out answers, AVX-512-BF16
EPYC, docs/hardware.md), mean answer NLL: F32 copy (the weights exactly) 2.47417, F16 2.47419, BF16
2.47461, Q8_0 2.47576, the file itself 2.47828 (its kernels round activations to 8 bits). So runs on
machines that choose F16 or BF16 agree to 0.0005 nats; Q8_0 (which re-rounds the weights to 8 bits)
and F32 (exact but twice their memory, and never faster there) are opt-in, as is Q4_0 for benchmarks.
A run records the type it ran (manifest `runtime_type`). Copies live in the cache
(`$HUMPBACK_HOME/runtime/`), keyed by the source file's path, size and modification time, so a
replaced file gets fresh copies and a read-only model folder is never written to.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .crashguard import log_tail, quiet_stderr
from .hardware import cpu_flags, cpu_name, physical_cores
from .models import ModelError, file_key, gguf_header, home
from .store import atomic_path, write_json

if TYPE_CHECKING:
    from .recipe import EngineConfig

# q4_0 re-rounds the weights: offered to benchmarks, not to recipes.
RUNTIME_TYPES = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "bf16": "LLAMA_FTYPE_MOSTLY_BF16", "f32": "LLAMA_FTYPE_ALL_F32",
                 "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}
CANDIDATES = ("original", "f16", "bf16")
BYTES_PER_WEIGHT = {"f16": 2.0, "bf16": 2.0, "f32": 4.0, "q8_0": 34 / 32}
# The loop reads ~40 prompt tokens per token it generates, an estimate from the quickstart's stages
# (not counted token by token): scoring reads ~200k prompt tokens a round and generates none;
# augment reads ~390 per ~15 generated; evaluation answers ~35 per ~120. So one overall type, weighted that way; a second copy for generation
# alone would double the disk and memory for the minority of the work.
PROMPT_PER_GENERATED = 40
PROMPT_TOKENS, DECODES = 128, 16  # ~0.8 s per type and round with its load (135M model, 2 cores: 7 s for 3 x 3)
# Rounds over all types, each type's best kept: a VM's slow spell (steal time) of a second or two
# lands on one type in one round, not on one type throughout. Measured on a 2-core EPYC VM, one
# round per type: BF16 read 600 prompt tokens/s in the spell and lost to F16 (607), so a whole
# quickstart ran on F16, whose scoring is 1.4x slower there; six probes minutes later read BF16
# 967-1094 and F16 655-683.
ROUNDS = 3


def cache_dir() -> Path:
    return home() / "runtime"




def copy_path(gguf: Path, kind: str) -> Path:
    """Where the `kind` copy of `gguf` is cached."""
    return cache_dir() / file_key(gguf) / f"{gguf.stem}.{kind}.gguf"


def runtime_gguf(gguf: Path, kind: str) -> Path:
    """The GGUF llama.cpp should run for an explicit `kind`: the file itself (`original`) or its copy
    in that tensor type, converted once into the cache."""
    gguf = Path(gguf)
    if kind == "original":
        return gguf
    out = copy_path(gguf, kind)
    if out.exists():
        return out
    import llama_cpp

    if kind not in RUNTIME_TYPES:
        raise ModelError(f"unknown runtime type {kind!r}: one of original, {', '.join(RUNTIME_TYPES)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_gguf(gguf, out, getattr(llama_cpp, RUNTIME_TYPES[kind]))
    return out


def runtime_path(gguf: Path, cfg: EngineConfig) -> Path:
    """The file an engine built from `cfg` runs: `engine.runtime_type`, with `auto` resolved by
    `choose` (measured once per machine, model and llama.cpp version)."""
    kind = choose(Path(gguf), cfg)["chosen"] if cfg.runtime_type == "auto" else cfg.runtime_type
    return runtime_gguf(Path(gguf), kind)


def pinned(gguf: Path, cfg: EngineConfig) -> EngineConfig:
    """`cfg` with `auto` replaced by the type it chose, for engines built elsewhere (Ray workers):
    a worker with other threads or another HUMPBACK_HOME would measure again and could choose
    otherwise, and the same windows would then write other texts."""
    if cfg.backend != "llama.cpp" or cfg.runtime_type != "auto":
        return cfg
    return replace(cfg, runtime_type=choose(Path(gguf), cfg)["chosen"])


def quantize_gguf(src: Path, dst: Path, ftype: int, types: dict[str, int] | None = None) -> None:
    """Write `src` as `dst` (atomically) through llama.cpp's own quantizer (`llama_model_quantize`:
    every type llama.cpp knows, K-quants included, at C speed). `ftype` is a LLAMA_FTYPE_* value;
    with `types`, each tensor named there gets that ggml type instead (a tensor already of its type
    is copied). Quantized tensors of another type are requantized."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    if types:
        table = (llama_cpp.llama_model_tensor_override * (len(types) + 1))()
        for row, (name, ggml_type) in zip(table, types.items(), strict=False):
            row.pattern, row.type = f"^{re.escape(name)}$".encode(), ggml_type
        params.tt_overrides = table  # the last row's NULL pattern ends the list
    with atomic_path(dst, suffix=".gguf") as tmp, quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise ModelError(f"{src}: llama_model_quantize failed ({rc})\n{log_tail()}")


# ----------------------------------------------------------------------------- runtime_type: auto


def machine_key(cfg: EngineConfig) -> dict[str, object]:
    """What a measurement holds for: CPU, instruction sets, llama.cpp version and build, and engine
    settings that change speed (threads, GPU layers, extra buffers, flash attention). The build's compiled-in
    features count apart from the version: one version built without AVX-512 (or with CUDA) is
    another speed table."""
    import llama_cpp

    from .engine import use_extra_buffers

    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    return {"cpu": cpu_name(), "flags": digest(" ".join(sorted(cpu_flags()))),
            "llama_cpp": llama_cpp.__version__,
            "build": digest(llama_cpp.llama_print_system_info().decode(errors="replace")),
            "threads": cfg.n_threads or physical_cores(), "n_gpu_layers": cfg.n_gpu_layers,
            "extra_buffers": use_extra_buffers(cfg.extra_buffers), "flash_attn": cfg.flash_attn}


PROBE = 2  # the measurement's method: 2 = ROUNDS interleaved rounds (1 measured each type once)


def measurement_path(gguf: Path, cfg: EngineConfig) -> Path:
    # the method counts: a choice made by a one-round probe (see ROUNDS) is measured again
    key = hashlib.sha256(json.dumps({**machine_key(cfg), "probe": PROBE}, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / file_key(gguf) / f"speed-{key}.json"


def cached_choice(gguf: Path, cfg: EngineConfig) -> dict | None:
    """The measurement `choose` made for this model on this machine, if it was made."""
    path = measurement_path(Path(gguf), cfg)
    return json.loads(path.read_text()) if path.exists() else None


def cost(prompt_tps: float, gen_tps: float) -> float:
    """Seconds per generated token of the loop's mix (PROMPT_PER_GENERATED prompt tokens each)."""
    return PROMPT_PER_GENERATED / prompt_tps + 1 / gen_tps


def candidates(gguf: Path) -> tuple[list[str], dict[str, str]]:
    """The types worth measuring, and why the others are skipped: a copy bigger than half the
    machine's memory (a BF16 copy of a 7B model is 14 GB) or than the cache's free disk."""
    n_params = sum(math.prod(shape) for shape, _ in gguf_header(gguf).tensors.values())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    cache_dir().mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(cache_dir()).free
    keep, skipped = [], {}
    for kind in CANDIDATES:
        size = n_params * BYTES_PER_WEIGHT.get(kind, 0.0)
        if kind != "original" and not copy_path(gguf, kind).exists():
            if memory and size > memory / 2:
                skipped[kind] = f"{size / 2**30:.1f} GiB copy > half of {memory / 2**30:.0f} GiB memory"
                continue
            if disk and size > disk:
                skipped[kind] = f"{size / 2**30:.1f} GiB copy > {disk / 2**30:.1f} GiB free in {cache_dir()}"
                continue
        keep.append(kind)
    return keep, skipped


def measure(path: Path, cfg: EngineConfig) -> dict[str, float]:
    """Prompt and generation tokens/s of one GGUF with the engine's settings: a PROMPT_TOKENS prompt
    read in one decode, then DECODES single-token decodes (the first read warms the caches)."""
    from .engine import Engine

    e = Engine(path, n_ctx=PROMPT_TOKENS + DECODES + 8, n_threads=cfg.n_threads, n_gpu_layers=cfg.n_gpu_layers,
               extra_buffers=cfg.extra_buffers, flash_attn=cfg.flash_attn == "on")
    try:
        n_vocab = e.llm.n_vocab()
        tokens = [(i * 7919) % max(1, n_vocab - 200) + 100 for i in range(PROMPT_TOKENS + DECODES)]
        e.llm.eval(tokens[:PROMPT_TOKENS])
        e.llm.reset()
        t = time.perf_counter()
        e.llm.eval(tokens[:PROMPT_TOKENS])
        pp = PROMPT_TOKENS / (time.perf_counter() - t)
        t = time.perf_counter()
        for tok in tokens[PROMPT_TOKENS:]:
            e.llm.eval([tok])
        tg = DECODES / (time.perf_counter() - t)
        return {"prompt_tps": round(pp, 1), "gen_tps": round(tg, 1)}
    finally:
        e.close()
        del e
        gc.collect()


def choose(gguf: Path, cfg: EngineConfig, on_status=None) -> dict:
    """Measure each candidate type (converting copies into the cache), ROUNDS times in turn, and
    keep the fastest for the loop's mix; cached per model file and machine (`measurement_path`), so later engines only
    read the choice. `on_status(text)` hears what is being measured (the first run's extra seconds)."""
    path = measurement_path(gguf, cfg)
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    if on_status:
        on_status("runtime_type auto: measuring original on this machine")
    # the file itself first: a broken one fails here, with llama.cpp's reason
    speeds = {"original": measure(gguf, cfg)}
    kinds, skipped = candidates(gguf)
    paths = {"original": gguf}
    for kind in (k for k in kinds if k != "original"):
        if on_status:
            on_status(f"runtime_type auto: converting to {kind}")
        paths[kind] = runtime_gguf(gguf, kind)
    if on_status:
        on_status(f"runtime_type auto: measuring {', '.join(paths)} on this machine, {ROUNDS} rounds")
    for rnd in range(ROUNDS):
        for kind, p in paths.items():
            if rnd or kind != "original":
                got = measure(p, cfg)
                speeds[kind] = {k: max(v, speeds.get(kind, {}).get(k, 0.0)) for k, v in got.items()}
    chosen = min(speeds, key=lambda k: cost(speeds[k]["prompt_tps"], speeds[k]["gen_tps"]))
    result = {"chosen": chosen, "speeds": speeds, "skipped": skipped, "machine": machine_key(cfg),
              "seconds": round(time.perf_counter() - t0, 1), "model": str(gguf),
              "prompt_per_generated": PROMPT_PER_GENERATED}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return result


def describe(gguf: Path | None, cfg: EngineConfig) -> str:
    """One line for `humpback models`: the setting, and for `auto` what was measured and chosen."""
    if cfg.runtime_type != "auto":
        return cfg.runtime_type
    got = cached_choice(gguf, cfg) if gguf is not None else None
    if got is None:
        return "auto (not measured on this machine yet: the first engine measures each type, a few seconds)"
    speeds = ", ".join(f"{k} {v['prompt_tps']:.0f}/{v['gen_tps']:.0f}" for k, v in got["speeds"].items())
    skipped = "; skipped " + ", ".join(f"{k} ({why})" for k, why in got["skipped"].items()) if got["skipped"] else ""
    return f"auto -> {got['chosen']} (measured prompt/generation tokens/s: {speeds}{skipped})"
