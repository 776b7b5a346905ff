"""LoRA fine-tuning: TRL's SFTTrainer + peft on a 4-bit (bitsandbytes nf4) base, or Unsloth's
FastLanguageModel when a CUDA GPU and the `[gpu]` extra are present.

Rows are conversational prompt/completion pairs, so TRL computes the loss on the answer tokens
only (it masks the prompt). The output is an ordinary PEFT adapter folder. Heavy imports
(torch, transformers, trl) happen inside the functions: the rest of the tool stays light.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .hardware import train_dtype
from .layout import TrainCounts
from .models import END_OF_TURN, ModelCard, chat_template, default_chat_template
from .progress import Progress, silent
from .recipe import TrainConfig
from .store import atomic_dir, check_owned, remove_stale_temps_of, scratch_dir, write_text


class TrainError(RuntimeError):
    """Training cannot start (backend unavailable, no rows); the message says what to change."""

StepReport = Callable[[int, int], None]  # (step, total steps)


def _hush() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # an offline tool starts no telemetry thread
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


def prepare_weights(card: ModelCard, gguf_path: Path, progress: Progress = silent) -> str:
    """Trainable weights for a card: a Hub repo id, or the GGUF dequantized once by transformers
    and cached as bf16 safetensors, once per GGUF content (20-40 s for the embedded model; the
    safetensors then load in ~1 s). The cache stays bf16 whatever the training dtype: float32
    training loads it exactly, so every kind of machine trains from the same weights."""
    if card.weights.get("hf_repo"):
        return card.weights["hf_repo"]
    out = card.weights_dir
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        _give_template(out, gguf_path)
        return str(out)
    _hush()
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers draws its own tqdm bar here, into the terminal beside rich's display; ours says
    # what the step is and that it happens once per model
    gguf_utils.tqdm = lambda items, **kw: items
    with progress(f"{card.name}: GGUF -> training weights (once per model)", None), _one_gguf_reader():
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16)
    # A GGUF-loaded model refuses save_pretrained until its (de)quantizer marker is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _give_template(Path(tmp), gguf_path)
    return str(out)


@contextlib.contextmanager
def _one_gguf_reader():
    """transformers parses the GGUF three times here (tokenizer, config, model), each with a gguf-py
    GGUFReader that builds a numpy view per vocabulary entry: for Gemma 3's 262k tokens that was two
    thirds of the conversion's time (cProfile: 55 of 91 s). One reader per file serves all three."""
    import gguf

    real, readers = gguf.GGUFReader, {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = real


def _give_template(weights: Path, gguf_path: Path) -> None:
    """A tokenizer saved without a chat template (a base model's) gets the one the engine uses
    (models.chat_template) as `chat_template.jinja`, which transformers reads beside the tokenizer:
    training rows then have the same turns as llama.cpp's prompts. Also mends caches written before."""
    config = weights / "tokenizer_config.json"
    has = (weights / "chat_template.jinja").exists() or (
        config.exists() and json.loads(config.read_text()).get("chat_template"))
    if not has:
        write_text(weights / "chat_template.jinja", chat_template(gguf_path))


def use_unsloth(cfg: TrainConfig) -> bool:
    if cfg.backend == "transformers":
        return False
    if _world() > 1 or cfg.processes > 1:
        if cfg.backend == "unsloth":
            raise TrainError("train.backend=unsloth trains on one GPU: set train.processes=1, "
                             "or train.backend=transformers to train on several")
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


def _with_template(tok):
    """A Hub tokenizer of a base model has no chat template: it gets what models.chat_template gives
    the model's GGUF (ChatML, opened by BOS where the tokenizer adds one), so rows match prompts."""
    if tok.chat_template is None:
        tok.chat_template = default_chat_template(
            tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id])
    return tok


def _load(weights: str, cfg: TrainConfig, seed: int):
    """Return (model, tokenizer, peft_config or None). Unsloth returns an already-wrapped model."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if use_unsloth(cfg):  # pragma: no cover - needs a GPU
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            weights, max_seq_length=cfg.max_length, load_in_4bit=cfg.quantize == "nf4",
            dtype=getattr(torch, train_dtype(cfg.dtype)),
        )
        tok = _with_template(tok)
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=cfg.target_modules, random_state=seed,
        )
        return model, tok, None

    # Weights as safetensors only (no pickle) and no code from the model repo.
    dtype = getattr(torch, train_dtype(cfg.dtype))
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": False}
    if cfg.quantize == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
        if _world() > 1 and torch.cuda.is_available():  # each DDP process quantizes onto its own GPU
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = AutoModelForCausalLM.from_pretrained(weights, **kwargs)
    tok = _with_template(AutoTokenizer.from_pretrained(weights, trust_remote_code=False))
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
    # the turn's end: 2 tokens where <|im_end|> is one, ~8 where a base model's ChatML spells it out
    end = len(tok(END_OF_TURN + "\n", add_special_tokens=False)["input_ids"]) if END_OF_TURN in (tok.chat_template or "") else 2
    for r in rows:
        prompt_text = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
        n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
        answer = r["completion"][0]["content"]
        comp_ids = tok(answer, add_special_tokens=False)["input_ids"]
        n_comp = len(comp_ids) + end
        shrink = r.get("shrink")
        if shrink and n_prompt + n_comp > max_length:
            ids = tok(shrink, add_special_tokens=False)["input_ids"]
            short = tok.decode(ids[: max(16, len(ids) - (n_prompt + n_comp - max_length) - 8)])
            r = {**r, "prompt": [dict(m, content=m["content"].replace(shrink, short)) for m in r["prompt"]]}
            prompt_text = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
            n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
        room = max_length - n_prompt - end
        if room <= 0:
            continue  # the prompt alone fills max_length: no answer token would be trained on
        if n_comp - end > room:
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
    progress: StepReport | None = None,
) -> TrainCounts:
    """Fine-tune a LoRA on `rows` ({"prompt": [messages], "completion": [assistant message]})
    and write the PEFT adapter to `out_dir` atomically. Returns training statistics.

    With several processes (`train_processes`) this starts them under torchrun and waits; each
    of them comes back here as one rank of the job."""
    if not rows:
        raise TrainError("no training rows (empty seed file or nothing selected?)")
    n = train_processes(cfg)
    if n > 1 and _world() == 1:
        return _launch(rows, Path(out_dir), weights, cfg, seed, progress, n)
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

    cuda = torch.cuda.is_available()

    class _AfterEachStep(TrainerCallback):
        """Progress, and on a CPU the heap trimmed (on a GPU the activations are not on it)."""

        def on_step_end(self, a, state, control, **kw):
            if not cuda:
                _trim_heap()
            if progress:
                progress(state.global_step, state.max_steps)

        def on_substep_end(self, a, state, control, **kw):  # between accumulated micro-batches
            if not cuda:
                _trim_heap()

    with scratch_dir(out_dir) as work:  # the trainer's output_dir: it saves nothing there (save_strategy "no")
        trainer = SFTTrainer(
            model=model, args=_sft_config(cfg, work, seed, cuda, _world()),
            train_dataset=ds, processing_class=tok, peft_config=peft_cfg, callbacks=[_AfterEachStep()],
        )
        trainer.remove_callback(PrinterCallback)  # our progress bar replaces the per-step dict prints
        n_tokens = sum(len(x["input_ids"]) for x in trainer.train_dataset)
        t0 = time.time()
        # only in bf16 training: in float32 the adapters over an nf4 base are still bf16 and need the cast
        dtype = train_dtype(cfg.dtype)
        as_they_are = peft_cfg is not None and dtype == "bfloat16"
        with _labelled_positions_only(), _adapter_inputs_as_they_are(trainer.model, as_they_are):
            result = trainer.train()
    seconds = time.time() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    seen = max((float(h.get("num_tokens", 0)) for h in trainer.state.log_history), default=0.0)
    if int(os.environ.get("RANK", 0)) != 0:  # DDP: rank 0 holds the same adapter and writes it
        return TrainCounts(rows=len(rows), steps=trainer.state.global_step)
    with atomic_dir(out_dir, owned=ADAPTER_FILES) as tmp:
        trainer.model.save_pretrained(tmp)
        stats = TrainCounts(
            rows=len(rows), steps=trainer.state.global_step,
            train_loss=round(float(result.training_loss), 4),
            first_loss=round(float(losses[0]), 4) if losses else None,
            last_loss=round(float(losses[-1]), 4) if losses else None,
            seconds=round(seconds, 1), tokens_per_second=round(seen / seconds, 1) if seen else None,
            backend="unsloth" if peft_cfg is None else "transformers",
            extra={"tokens_per_epoch": n_tokens, "quantize": cfg.quantize, "processes": _world(),
                   "dtype": dtype})
        (tmp / "train_stats.json").write_text(json.dumps(stats.to_json(), indent=2))
    del trainer, model
    _release_memory()
    return stats


@contextlib.contextmanager
def _labelled_positions_only():
    """Let TRL's fused LM head project only the positions that have a label, on every device.

    TRL (>= 1.x) computes the loss through a fused LM head that skips the unlabelled positions on
    Triton devices only; elsewhere it projects every position (fixed tile shapes keep compilers such
    as Neuron's from recompiling). A CPU in eager mode recompiles nothing, and the 49k-token output
    layer over the prompt positions is most of the step there: measured on 2 cores (8 steps, batch
    4, medians of 2), 195 -> 387 tokens/s on backward rows (~330 tokens, ~20 of them labelled) and
    189 -> 261 on forward rows, with the same loss to 4 decimals. TRL decides this in a private
    function of `trl.trainer.utils`; where a TRL version lacks it, training is just slower."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type in ("cpu", "mps") or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def _adapter_inputs_as_they_are(model, peft: bool):
    """Hand each LoRA its input in the base's dtype (bf16) instead of a float32 copy (in float32
    training there is no copy to save).

    PEFT casts a layer's input to the adapter weights' dtype (float32) before the LoRA; under the
    trainer's bf16 autocast the LoRA's matmul casts it straight back, so the copy changes no number
    (bf16 -> float32 -> bf16 is exact) and only costs two conversions of every adapted layer's input,
    forward and backward: measured on 2 cores (10 steps, 2 runs each) the same losses to 4 decimals
    and 1.06x tokens/s on backward rows (1.02x on forward rows). Over an nf4 base PEFT keeps the
    adapters in bf16, so nothing is copied there; Unsloth (peft=False) has its own layers."""
    if not peft:
        return contextlib.nullcontext()
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model)


def _sft_config(cfg: TrainConfig, output_dir: Path, seed: int, cuda: bool, world: int = 1):
    import dataclasses

    from trl import SFTConfig

    dtype = train_dtype(cfg.dtype)
    # train.group_by_length: batches of rows of similar length, in random order (transformers'
    # length-grouped sampler: random megabatches of up to 50 batches, each sorted by length), as a
    # padded batch costs its longest row times its size. On the quickstart's round-1 rows, random
    # batches of 4 hold 37 % padding, grouped ones 7 %. (`group_by_length=True` before transformers 5.)
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    if "train_sampling_strategy" in names:
        grouped: dict[str, Any] = {"train_sampling_strategy": "group_by_length" if cfg.group_by_length else "random"}
    else:
        grouped = {"group_by_length": cfg.group_by_length}
    return SFTConfig(
        **grouped,
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch_size // world,  # the recipe's batch is the global one
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
        # autocast in the dtype the weights were loaded in (`train.dtype`); fp16 gets loss scaling
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16" and cuda,
        dataloader_num_workers=0,
        disable_tqdm=True,
        # TRL turns activation checkpointing on by default; for small models on a CPU it only
        # costs time (measured: 70 -> 130 tokens/s on SmolLM2-135M without it).
        gradient_checkpointing=cfg.gradient_checkpointing,
        # Every LoRA weight gets a gradient each step; DDP's search for unused ones only costs time.
        ddp_find_unused_parameters=False if world > 1 else None,
    )


# ----------------------------------------------------------------------------- several processes
# Data parallelism through PyTorch DDP as TRL/transformers' Trainer does it under torchrun (the
# launcher `accelerate launch` wraps): each process holds the model, takes its share of every
# batch, and the LoRA gradients (a few MB) are averaged each step. Meant for machines with several
# GPUs. On a CPU it works (gloo; the tests use it) but does not pay: `bench_train.py --processes 2`
# on 2 cores (backward rows, batch 4, 10 steps, medians of 3): two one-thread processes 262
# tokens/s vs one two-thread process 241 (1.09x), but 40.8 s vs 35.1 s per training once the
# start-up (imports and a model load in each process) is counted.
_STEP = "@humpback-step"  # rank 0's progress lines on stdout


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def train_processes(cfg: TrainConfig) -> int:
    """`train.processes`, checked against the GPUs this machine has."""
    import torch

    if cfg.processes > 1 and torch.cuda.is_available() and cfg.processes > torch.cuda.device_count():
        raise TrainError(f"train.processes={cfg.processes}, but this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s): use at most one process per GPU")
    return cfg.processes


def _die_with_parent() -> None:
    """In the launcher, before exec (Linux): get SIGTERM when the process that started it dies,
    even by SIGKILL; torchrun then stops its workers, so a killed run leaves no training behind
    that could write into the folder its resumed run is using."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _launch(rows: list[dict[str, Any]], out_dir: Path, weights: str, cfg: TrainConfig, seed: int,
            progress: StepReport | None, n: int) -> TrainCounts:
    """Train with `n` DDP processes under torchrun; rank 0 writes the adapter to `out_dir`."""
    import dataclasses

    import torch

    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if not torch.cuda.is_available():
        from .engine import physical_cores

        env["OMP_NUM_THREADS"] = str(max(1, physical_cores() // n))  # cores shared, not oversubscribed
    with scratch_dir(out_dir) as tmp:  # the job (the rows), torchrun's log, the ranks' errors
        job = tmp / "job.json"
        job.write_text(json.dumps({"rows": rows, "out_dir": str(out_dir), "weights": weights, "seed": seed,
                                   "cfg": dataclasses.asdict(cfg), "errors": str(tmp)}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", "humpback_lite.train", str(job)]
        with open(tmp / "log.txt", "w+") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            try:
                for line in proc.stdout or ():
                    if line.startswith(_STEP) and progress:
                        step, total = line.split()[1:3]
                        progress(int(step), int(total))
                code = proc.wait()
            finally:
                if proc.poll() is None:  # interrupted here: stop the workers too
                    proc.terminate()
                    proc.wait()
            if code:
                raise _worker_error(tmp, log, n, code)
    return TrainCounts.of(json.loads((out_dir / "train_stats.json").read_text()))


def _worker_error(tmp: Path, log, n: int, code: int) -> TrainError:
    """The first rank's own error message, else the end of torchrun's log."""
    first = min(tmp.glob("error-*.txt"), default=None)
    if first is not None:
        return TrainError(f"training in {n} processes failed: {first.read_text().strip()}")
    log.seek(0)
    tail = "".join(log.readlines()[-15:]).strip()
    return TrainError(f"training in {n} processes failed (torchrun exit {code}):\n{tail}")


def _worker(job_file: str) -> None:
    """One rank of a `_launch`ed training (run by torchrun as `python -m humpback_lite.train JOB`)."""
    job = json.loads(Path(job_file).read_text())
    rank = int(os.environ.get("RANK", 0))  # threads: torch reads OMP_NUM_THREADS, set by _launch

    def report(step: int, total: int) -> None:
        if rank == 0:
            print(f"{_STEP} {step} {total}", flush=True)

    try:
        train_lora(job["rows"], job["out_dir"], job["weights"], TrainConfig(**job["cfg"]),
                   seed=job["seed"], progress=report)
    except Exception as e:
        why = str(e) if isinstance(e, TrainError) else f"{type(e).__name__}: {e}"
        (Path(job["errors"]) / f"error-{rank}.txt").write_text(why)
        raise


# What a training writes into its adapter folder (PEFT's files, our stats, the GGUF conversion): an
# existing folder holding anything else is the user's and is not replaced.
ADAPTER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors", "README.md", "train_stats.json",
                           "adapter.gguf"})


def run(examples: list[dict[str, Any]], adapter_dir: Path, gguf_out: Path, card: ModelCard, gguf: Path,
        cfg: TrainConfig, seed: int = 0, progress: Progress = silent, label: str = "train") -> TrainCounts:
    """A training stage, for the loop and `humpback train`: a LoRA on `examples` into `adapter_dir`
    (PEFT), converted into `gguf_out` for llama.cpp."""
    from .adapters import peft_to_gguf

    for target in (adapter_dir, gguf_out):  # what a killed earlier try left half-written
        remove_stale_temps_of(target)
    # before minutes of training: a folder of the user's own files is refused, not replaced
    check_owned(adapter_dir, ADAPTER_FILES | {Path(gguf_out).name})
    weights = prepare_weights(card, gguf, progress)
    with progress(label, None) as advance:
        stats = train_lora(examples, adapter_dir, weights, cfg, seed=seed,
                           progress=lambda step, total: advance(1, total=total))
    stats.extra["gguf"] = peft_to_gguf(adapter_dir, gguf, gguf_out)
    return stats


def _trim_heap() -> None:
    """Give glibc's freed pages back to the OS (a no-op where libc is not glibc).

    Called after every micro-batch of a CPU training: each one frees its activations, and rows of
    other lengths need other tensor sizes, which glibc's heap serves beside the freed ones instead
    of in them, so the resident size grows over the steps. Measured on the quickstart's round-1
    training alone (2 cores, bf16): batch 4 peak RSS 4.24 -> 3.78 GiB, 124 -> 128 s; 2 x 2
    accumulated 3.54 -> 2.95 GiB; the same losses. The cost is faulting the pages in again: the
    quickstart's trainings (2 x 2, trimmed) took 6-26 % longer than in batches of 4 untrimmed, the
    whole run 4 %. glibc's other knob, a fixed M_MMAP_THRESHOLD, saved as much at 1 MiB but cost
    12 % on the training alone, and MALLOC_ARENA_MAX=1 saved nothing."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - raises AttributeError where the libc is not glibc (musl)
        return libc
    except (OSError, AttributeError):  # macOS, musl: nothing to trim
        return None


def _release_memory() -> None:
    """Hand the freed training heap back to the OS before the llama.cpp stages that follow.
    glibc keeps it otherwise (measured after a 135M training: 2.2 GB resident -> 0.7 GB)."""
    import gc

    gc.collect()
    _trim_heap()


if __name__ == "__main__":
    _worker(sys.argv[1])
