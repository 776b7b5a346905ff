"""What this machine computes fast: CPU flags, cores, and the torch dtype training should use.

Why a choice at run time: bf16 is the right training dtype only where the hardware has bf16
arithmetic. Measured on a 2-core AMD EPYC with AVX2 and no AVX-512 (torch 2.13 CPU build): one
1536x576 by 576x1536 matmul 48.6 GFLOP/s in float32 and 1.2 in bfloat16 (emulated, 40x slower);
a LoRA training step of SmolLM2-135M 24 s in float32 and ~300 s in bfloat16. On an AMD EPYC with
AVX-512 BF16 the same matmul runs 393 GFLOP/s in bf16 against 157 in float32 (docs/hardware.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# CPU flags (Linux /proc/cpuinfo names) of native bf16 arithmetic: AVX-512 BF16 (Zen 4+, Xeon
# Cooper Lake+) and AMX BF16 (Xeon Sapphire Rapids+).
BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def _cpuinfo(field: str) -> str | None:
    """The first `field` line of Linux's /proc/cpuinfo (None elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return next((ln.partition(":")[2].strip() for ln in text.splitlines() if ln.startswith(field)), None)


# oneDNN ISA caps below AVX-512 BF16 (ONEDNN_MAX_CPU_ISA): torch's bf16 matmuls are emulated under
# them, as on a CPU without the instructions. The benchmarks use the cap to act as an AVX2-only CPU.
_NO_BF16_ISA = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere), less the bf16 ones when oneDNN is
    capped below them (ONEDNN_MAX_CPU_ISA=AVX2, the AVX2 emulation of docs/hardware.md)."""
    flags = set((_cpuinfo("flags") or "").split())
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _NO_BF16_ISA:
        flags -= BF16_FLAGS
    return flags


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module knows."""
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine()


def physical_cores() -> int:
    """Cores this process may run on, counting hyper-threads once: llama.cpp's matmuls gain
    nothing from a core's second thread and lose to the contention."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(1, len(allowed))
    cores, cpu, phys = set(), None, "0"
    for line in text.splitlines():
        key, _, value = (x.strip() for x in line.partition(":"))
        if key == "processor":
            cpu = int(value)
        elif key == "physical id":
            phys = value
        elif key == "core id" and cpu in allowed:
            cores.add((phys, value))
    return max(1, len(cores) or len(allowed))


def cuda_capability() -> tuple[int, int] | None:
    """Compute capability of the first CUDA GPU, or None without one (or without torch)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(0))  # type: ignore[return-value]


def train_dtype(setting: Dtype = "auto", capability: tuple[int, int] | None | str = "detect",
                flags: set[str] | None = None) -> str:
    """The torch dtype name training computes in. `auto`: bf16 on CUDA GPUs of compute capability
    8.0+ (Ampere on) and on CPUs with native bf16; float16 (with loss scaling) on older GPUs, which
    have fast fp16 but no bf16; float32 on every other CPU. An explicit setting is kept as it is.
    `capability`/`flags` are for tests; by default they are read from this machine."""
    if setting != "auto":
        return setting
    cap = cuda_capability() if capability == "detect" else capability
    if cap is not None:
        return "bfloat16" if cap >= (8, 0) else "float16"
    return "bfloat16" if BF16_FLAGS & (cpu_flags() if flags is None else flags) else "float32"


def describe_train_dtype(setting: Dtype = "auto") -> str:
    """`train_dtype` with the reason, for `humpback models`."""
    cap = cuda_capability()
    chosen = train_dtype(setting, cap)
    if setting != "auto":
        return f"{chosen} (set)"
    if cap is not None:
        return f"{chosen} (auto: CUDA compute capability {cap[0]}.{cap[1]})"
    bf16 = sorted(BF16_FLAGS & cpu_flags())
    return f"{chosen} (auto: CPU {'has ' + ', '.join(bf16) if bf16 else 'has no native bf16'})"
