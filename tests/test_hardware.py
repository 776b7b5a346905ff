"""The training dtype follows the hardware: bf16 only where it is native (issue: on an AVX2 CPU bf16
training ran ~40x slower than float32, measured ~300 s vs 24 s per step of SmolLM2-135M)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from humpback_lite import hardware
from humpback_lite.cli import main
from humpback_lite.hardware import train_dtype
from humpback_lite.recipe import TrainConfig
from humpback_lite.train import _sft_config

AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}  # Zen 2/3, recent Intel Core
AVX512_BF16 = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16"}  # Zen 4, Xeon Cooper Lake
AMX = AVX2 | {"avx512f", "amx_tile", "amx_int8", "amx_bf16"}  # Xeon Sapphire Rapids


@pytest.mark.parametrize(("flags", "expected"), [
    (AVX2, "float32"), (AVX512_BF16, "bfloat16"), (AMX, "bfloat16"), (set(), "float32")])
def test_auto_on_a_cpu_takes_bf16_only_where_it_is_native(flags, expected):
    assert train_dtype("auto", capability=None, flags=flags) == expected


def test_a_bf16_cpu_with_onednn_capped_at_avx2_trains_in_float32(monkeypatch):
    # the AVX2 emulation the benchmarks use: torch's bf16 matmuls are emulated under the cap
    monkeypatch.setattr(hardware, "_cpuinfo", lambda field: " ".join(sorted(AVX512_BF16)) if field == "flags" else None)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the suite itself may run under the emulation
    assert train_dtype("auto", capability=None) == "bfloat16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert train_dtype("auto", capability=None) == "float32"


@pytest.mark.parametrize(("capability", "expected"), [
    ((9, 0), "bfloat16"), ((8, 0), "bfloat16"), ((8, 6), "bfloat16"), ((7, 5), "float16"), ((6, 1), "float16")])
def test_auto_on_a_cuda_gpu_takes_bf16_from_ampere_on_and_fp16_before(capability, expected):
    # the GPU decides, whatever the host CPU has
    assert train_dtype("auto", capability=capability, flags=AVX2) == expected


def test_an_explicit_dtype_is_kept_on_any_hardware():
    for setting in ("float32", "bfloat16", "float16"):
        assert train_dtype(setting, capability=None, flags=AVX2) == setting
        assert train_dtype(setting, capability=(9, 0), flags=AMX) == setting


def test_the_trainer_autocasts_in_the_chosen_dtype(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "cuda_capability", lambda: None)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX2)
    args = _sft_config(TrainConfig(), tmp_path, 0, cuda=False)
    assert args.bf16 is False and args.fp16 is False  # float32 on an AVX2 CPU
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX512_BF16)
    args = _sft_config(TrainConfig(), tmp_path, 0, cuda=False)
    assert args.bf16 is True
    args = _sft_config(TrainConfig(dtype="float32"), tmp_path, 0, cuda=False)
    assert args.bf16 is False


def test_a_wrong_dtype_names_the_key():
    from humpback_lite.recipe import RecipeError, build

    with pytest.raises(RecipeError, match="dtype"):
        build(TrainConfig, ("dtype=bf15",), prefix="train.")


def test_models_command_says_what_training_computes_in_here(monkeypatch):
    monkeypatch.setattr(hardware, "cuda_capability", lambda: None)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX2)
    out = CliRunner().invoke(main, ["models"], terminal_width=200).output
    assert "training on this machine: dtype float32 (auto: CPU has no native bf16)" in out
