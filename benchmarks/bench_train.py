"""Training throughput side by side in one process: our `train_lora` vs TRL's `SFTTrainer` with its
defaults, on the same rows, the same LoRA and the same number of steps.

    python benchmarks/bench_train.py [--steps 12] [--repeats 3] [--processes 2] [--model M]

Rows: the bundled seed pairs as forward rows (instruction -> answer), the quickstart's training
settings (bf16 weights, batch 4, max_length 384, LoRA r=16 on every linear layer), on a CUDA GPU
where there is one (both sides). Each line:
`name: ours X tokens/s, baseline Y tokens/s, ratio Z`, medians over repeats, then the loss after the
same steps: ours with random batches must agree with TRL's (only the speed may differ); length-grouped
batches (our default) put other rows in a step. Then peak memory. With
`--processes N`: our trainer in N data-parallel processes (DDP under torchrun) vs in one, on the
backward rows of the same pairs (~330 tokens), each process with cores / N threads.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from humpback_lite import prompts
from humpback_lite.hardware import train_dtype
from humpback_lite.models import fetch, get_card
from humpback_lite.recipe import TrainConfig
from humpback_lite.seed import load_seed
from humpback_lite.train import _load, fit_rows, prepare_weights, train_lora


def trl_defaults(rows: list[dict], weights: str, cfg: TrainConfig, out: Path) -> tuple[float, float, int]:
    """SFTTrainer with its own defaults except what must match (steps, batch, lr, length, LoRA)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model, tok, peft_cfg = _load(weights, cfg, 0)
    ds = Dataset.from_list(fit_rows(rows, tok, cfg.max_length))
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps,
                     learning_rate=cfg.learning_rate, max_length=cfg.max_length, report_to=[],
                     use_cpu=not torch.cuda.is_available(),
                     # TRL's default autocasts to bf16, which CPUs without native bf16 emulate ~40x
                     # slower: the baseline computes in the dtype that is fastest here, as ours does
                     bf16=train_dtype(cfg.dtype) == "bfloat16", fp16=train_dtype(cfg.dtype) == "float16",
                     save_strategy="no", seed=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_cfg)
    t = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t
    tokens = max(float(h.get("num_tokens", 0)) for h in trainer.state.log_history)
    return tokens / seconds, float(result.training_loss), trainer.state.global_step


def matmul_rates() -> str:
    """GFLOP/s of one 1536x576 by 576x1536 matmul in float32 and bfloat16 (medians of 5): shows
    whether this CPU (or the AVX2 emulation: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) has
    native bf16. On the AVX2-only EPYC: 48.6 and 1.2."""
    import torch

    out = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(1536, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        out.append(f"{str(dtype).removeprefix('torch.')} {2 * 1536 * 576 * 1536 / statistics.median(times) / 1e9:.1f}")
    return f"matmul GFLOP/s: {', '.join(out)} (torch CPU capability {torch.backends.cpu.get_cpu_capability()})"


def main() -> None:
    print(matmul_rates())
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--processes", type=int, default=0, help="also compare N training processes with one")
    ap.add_argument("--model", default="smollm2-135m", help="a model card or a .gguf path")
    args = ap.parse_args()

    card = get_card(args.model)
    weights = prepare_weights(card, fetch(card))
    seed_rows, _ = load_seed("builtin:seed", 30)
    rows = [prompts.forward_row(dict(r, source="seed"), True) for r in seed_rows]
    cfg = TrainConfig(quantize="none", max_steps=args.steps, batch_size=4, max_length=384)
    ours, plain, theirs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            stats = train_lora(rows, Path(tmp) / f"ours{i}", weights, cfg, seed=0)
            ours.append((stats.tokens_per_second, stats.train_loss))
            # random batches, as TRL's: the same rows per step, so the losses must agree
            stats = train_lora(rows, Path(tmp) / f"plain{i}", weights, replace(cfg, group_by_length=False), seed=0)
            plain.append((stats.tokens_per_second, stats.train_loss))
            theirs.append(trl_defaults(rows, weights, cfg, Path(tmp) / f"trl{i}"))
    o, t = statistics.median(x[0] for x in ours), statistics.median(x[0] for x in theirs)
    r = statistics.median(x[0] for x in plain)
    print(f"train: ours {o:.0f} tokens/s, TRL SFTTrainer defaults {t:.0f} tokens/s, ratio {o / t:.2f}")
    print(f"train, ours with random batches (train.group_by_length=false): {r:.0f} tokens/s, ratio {r / t:.2f}")
    print(f"loss after {args.steps} steps: ours with random batches {statistics.median(x[1] for x in plain):.4f}, "
          f"TRL defaults {statistics.median(x[1] for x in theirs):.4f} (the same rows per step); ours with "
          f"length-grouped batches {statistics.median(x[1] for x in ours):.4f} (other rows share a step)")
    import torch

    gpu = (f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB on {torch.cuda.get_device_name()}"
           if torch.cuda.is_available() else "")
    print(f"(training dtype {train_dtype(cfg.dtype)}; medians of {args.repeats}; peak RSS of the process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB{gpu})")
    if args.processes > 1:
        processes(seed_rows, weights, args)


def processes(seed_rows: list[dict], weights: str, args) -> None:
    """Tokens/s of N DDP processes vs one, alternating runs; wall time includes starting them."""
    rows = [prompts.backward_row(r) for r in seed_rows]
    one, many = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for n, runs in ((1, one), (args.processes, many)):
                cfg = TrainConfig(quantize="none", max_steps=args.steps, batch_size=4, max_length=384, processes=n)
                t = time.perf_counter()
                stats = train_lora(rows, Path(tmp) / f"p{n}-{i}", weights, cfg, seed=0)
                runs.append((stats.tokens_per_second, time.perf_counter() - t, stats.train_loss))
    o, m = statistics.median(x[0] for x in one), statistics.median(x[0] for x in many)
    print(f"train processes: ours in {args.processes} processes {m:.0f} tokens/s, in one {o:.0f} tokens/s, "
          f"ratio {m / o:.2f}")
    print(f"  wall per training (with start-up): {statistics.median(x[1] for x in many):.1f} s vs "
          f"{statistics.median(x[1] for x in one):.1f} s; loss {statistics.median(x[2] for x in many):.4f} vs "
          f"{statistics.median(x[2] for x in one):.4f}")


if __name__ == "__main__":
    main()
