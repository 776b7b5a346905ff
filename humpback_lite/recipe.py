"""A recipe is the whole description of a run: a typed dataclass tree loaded from YAML.

Every field has a docstring; unknown keys, wrong types and out-of-range values are errors that
name the dotted key and what is allowed. ``key.sub=value`` overrides are applied before checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from .hardware import Dtype

# Curation vocabulary (signals.py computes them): rubric modes read the paper's 5-point rubric.
RUBRIC_MODES = ("expected", "greedy", "reasoning")
LIKELIHOOD_SIGNALS = ("pmi", "ifd", "backward")
SIGNALS = ("rubric", *LIKELIHOOD_SIGNALS)


class RecipeError(ValueError):
    """A recipe (file, override or value) is wrong; the message names the dotted key."""


@dataclass
class CorpusFilters:
    """How the corpus is cut into candidate answers and filtered. The one description of these
    settings: the recipe's `data` section has them (same names), `humpback segment` takes them as
    options (defaults and help from here), and the corpus stage reads them."""

    min_chars: int = 600
    """Shortest candidate answer kept, in characters (paper: 600)."""
    max_chars: int = 3000
    """Longest candidate answer kept, in characters (paper: 3,000)."""
    text_field: str = "text"
    """Column holding the text in .jsonl/.json/.csv/.parquet inputs and hf: datasets."""
    include: list[str] = field(default_factory=list)
    """Glob patterns of files to read inside folders (default: every known text format)."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of files to skip inside folders."""
    repetition: float = 0.3
    """Drop a segment when more than this share of its word 3-grams recur across its sentences (0 = off)."""
    headers: bool = True
    """Drop sections under empty, all-caps or navigation-like headings (paper)."""
    boilerplate: bool = True
    """Remove cookie banners, menus, 'share this' and similar lines."""
    language: Literal["en"] | None = None
    """Keep only segments that look like this language (stopword test); None = no filter."""
    dedup: Literal["minhash", "exact", "none"] = "minhash"
    """`exact`: normalised-text hash; `minhash`: that plus MinHash LSH near-duplicates."""
    dedup_threshold: float = 0.8
    """Estimated Jaccard similarity (word 5-grams) above which a segment is a near-duplicate."""

    def __post_init__(self) -> None:
        _check(self.min_chars >= 1, "min_chars", "must be >= 1")
        _check(self.max_chars >= self.min_chars, "max_chars", "must be >= min_chars")
        _check(0 <= self.repetition <= 1, "repetition", "must be in [0, 1]")
        _check(0 < self.dedup_threshold <= 1, "dedup_threshold", "must be in (0, 1]")

    @classmethod
    def of(cls, data: CorpusFilters) -> CorpusFilters:
        """Just the filters of a `data` section."""
        return CorpusFilters(**{f.name: getattr(data, f.name) for f in dataclasses.fields(CorpusFilters)})


@dataclass
class DataConfig(CorpusFilters):
    """The run's data: seed pairs, the corpus, and how it is cut (`CorpusFilters`' fields)."""

    seed: str = "builtin:seed"
    """Seed pairs: a JSONL file with `instruction` and `output`, or `builtin:seed` (bundled set)."""
    heldout: int = 30
    """Seed pairs held out for evaluation and never trained on (rows marked `split: heldout` first)."""
    max_seed: int | None = None
    """Train on at most this many seed pairs (None = all that are not held out)."""
    corpus: list[str] = field(default_factory=lambda: ["pydoc:topics"])
    """Unlabelled inputs: files, directories, or `pydoc:topics` (Python's own reference text)."""
    max_segments: int | None = None
    """Use at most this many segments (a uniform sample across the corpus, seeded); None = all."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.heldout >= 0, "heldout", "must be >= 0")
        _check(self.max_segments is None or self.max_segments >= 1, "max_segments", "must be >= 1")
        _check(self.max_seed is None or self.max_seed >= 1, "max_seed", "must be >= 1")
        _check(len(self.corpus) >= 1, "corpus", "needs at least one input")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a recipe dataclass, as one line: what the recipe's
    readers, `humpback segment --help` and the docs show."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):  # a base class's fields first, as dataclasses order them
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for a, b in zip(body, body[1:], strict=False):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


@dataclass
class EngineConfig:
    n_ctx: int = 2048
    """llama.cpp context length in tokens (prompt + generation)."""
    n_threads: int | None = None
    """CPU threads for llama.cpp (None = the physical cores this process may use)."""
    n_batch: int = 512
    """Prompt tokens evaluated per llama.cpp decode call."""
    n_gpu_layers: int = 0
    """Layers offloaded to a GPU when llama.cpp was built with one (-1 = all)."""
    runtime_type: Literal["auto", "original", "f16", "bf16", "f32", "q8_0"] = "auto"
    """Tensor type llama.cpp runs: the GGUF as shipped, or a copy converted once (cached). `auto`
    measures the file, its F16 and its BF16 copy once on this machine (cached per model, CPU and
    llama.cpp version) and runs the fastest; the copies keep the weights to within bf16 rounding,
    so machines that choose differently agree to ~0.0005 nats (docs/hardware.md). `f32` (exact, twice
    the memory) and `q8_0` (re-rounds the weights) are opt-in. Part of the fingerprint as written;
    what `auto` chose is not, like train.dtype."""
    extra_buffers: Literal["auto", "on", "off"] = "auto"
    """llama.cpp's extra CPU weight layouts (AMX tiles, repacking). auto = off on CPUs with AMX, where
    quantized GGUFs crash llama.cpp (llama.cpp#20824), on elsewhere. Does not change results."""
    flash_attn: Literal["on", "off"] = "on"
    """llama.cpp's fused attention kernel. Measured on 2-core EPYCs (docs/performance.md): scoring
    1.2x, generation 1.04-1.35x faster; per-token log-probs move as much as choosing the BF16 or F16
    copy does. Its rounding depends on how many rows a decode holds: scoring keeps every decode
    >= 64 rows (engine.MIN_ROWS), so scores do not depend on what ran before; generated text depends
    on which sequences share a decode, which the resume windows fix (the same in Ray workers and
    here), and on the thread count. Float rounding only, so not part of the fingerprint."""
    parallel: int | None = None
    """Sequences generated together per llama.cpp decode (continuous batching), each with its own
    n_ctx of KV cache. None = as many as fit a 1 GiB KV cache, at most 16 (16 for the embedded model
    at n_ctx 2048). Speed depends on it (docs/performance.md); a run's texts depend only on it
    through llama.cpp's rounding, and a resumed run repeats the same batches."""

    backend: Literal["llama.cpp", "openai"] = "llama.cpp"
    """Who runs the model: llama.cpp in this process, or an OpenAI-compatible server at `base_url`
    (llama-server, vLLM, Ollama, `python -m llama_cpp.server`; docs/remote.md)."""
    base_url: str | None = None
    """The server's OpenAI API root, e.g. http://127.0.0.1:8000/v1 (backend openai)."""
    api_key_env: str | None = None
    """Name of the environment variable that holds the server's API key (the key is never stored)."""
    served_model: str | None = None
    """The server's name for the base model (None = the first it lists). Adapters are asked for by
    the name of the model they make: backward, M0, M1, ..., random, all (`humpback serve-config`)."""
    top_logprobs: int = 20
    """Next-token candidates asked of a server when a score digit is read (backend openai)."""
    timeout: float = 600.0
    """Seconds a server request may take before it is retried (backend openai)."""
    retries: int = 6
    """Retries, with exponential backoff, of a server request that timed out or got 429/5xx."""
    executor: Literal["local", "ray"] = "local"
    """Where augment and score run: in this process, or as Ray tasks over a cluster (the `ray`
    section; needs the `[ray]` extra). Both write the same records."""

    def __post_init__(self) -> None:
        _check(self.n_ctx >= 256, "n_ctx", "must be >= 256")
        _check(self.parallel is None or 1 <= self.parallel <= 256, "parallel", "must be in 1..256 (or null: auto)")
        _check(self.n_batch >= 1, "n_batch", "must be >= 1")
        _check(self.n_threads is None or self.n_threads >= 1, "n_threads", "must be >= 1 (or null: the physical cores)")
        _check(self.n_gpu_layers >= -1, "n_gpu_layers", "must be >= 0, or -1 for all layers")
        _check(self.backend != "openai" or bool(self.base_url), "base_url",
               "needed with engine.backend=openai (the server's API root, e.g. http://127.0.0.1:8000/v1)")
        _check(self.top_logprobs >= 1, "top_logprobs", "must be >= 1")
        _check(self.timeout > 0, "timeout", "must be > 0")
        _check(self.retries >= 0, "retries", "must be >= 0")


@dataclass
class RayConfig:
    address: str | None = None
    """Ray cluster to join (`auto`, `ray://host:10001`); None = start one on this machine."""
    workers: int = 2
    """Engines working at once, one per Ray actor; each holds a model (or a server connection)."""
    cpus_per_worker: int = 1
    """CPUs each worker reserves; its llama.cpp threads (unless engine.n_threads says otherwise)."""
    gpus_per_worker: float = 0.0
    """GPUs each worker reserves (fractions share one GPU)."""

    def __post_init__(self) -> None:
        _check(self.workers >= 1, "workers", "must be >= 1")
        _check(self.cpus_per_worker >= 1, "cpus_per_worker", "must be >= 1")
        _check(self.gpus_per_worker >= 0, "gpus_per_worker", "must be >= 0")


@dataclass
class AugmentConfig:
    temperature: float = 0.7
    """Sampling temperature for the backward model (paper: 0.7)."""
    top_p: float = 0.9
    """Nucleus sampling for the backward model (paper: 0.9)."""
    max_new_tokens: int = 64
    """Longest instruction generated, in tokens."""
    max_segment_tokens: int = 1024
    """Segments longer than this many tokens are cut before prompting (keeps prompts inside n_ctx)."""

    def __post_init__(self) -> None:
        _check(self.temperature >= 0, "temperature", "must be >= 0")
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        _check(self.max_segment_tokens >= 16, "max_segment_tokens", "must be >= 16")


@dataclass
class CurateConfig:
    mode: Literal["expected", "greedy", "reasoning", "pmi", "ifd", "backward", "combined"] = "expected"
    """What ranks the candidates. Rubric modes (the paper's 5-point rubric): `expected`, the
    probability-weighted score over "1".."5" after `Score:` (one forward pass); `greedy`, the most
    likely digit there; `reasoning`, a brief reasoning, then a `Score:` line constrained to a digit.
    Likelihood modes: `pmi`, how much the instruction raises the answer's log-likelihood; `ifd`,
    the instruction-following difficulty (Superfiltering), negated; `backward`, how much the answer
    raises the instruction's log-likelihood under the backward model; `combined`, the average
    percentile rank of the signals in `combine`. Likelihood modes rank, so they select with
    `top_fraction` or `target_count`."""
    signals: list[str] = field(default_factory=lambda: ["rubric", "pmi", "ifd"])
    """Signals computed for every candidate and check (the mode's own are always added), kept in
    each record so the report can compare them: rubric, pmi, ifd, backward."""
    combine: list[str] = field(default_factory=lambda: ["pmi", "ifd"])
    """Signals averaged (by percentile rank) in `combined` mode."""
    threshold: float = 4.0
    """Rubric modes: keep pairs whose score is >= this (the paper's k; it used 5 with integer scores)."""
    top_fraction: float | None = None
    """If set, keep this fraction of best-scored pairs instead of using `threshold`."""
    target_count: int | None = None
    """If set, keep this many best-scored pairs (overrides `top_fraction` and `threshold`)."""
    dedup: float | None = 0.8
    """Skip a pair whose instruction shares this share of word trigrams (Jaccard) with a better
    kept one; null keeps near-duplicates."""
    max_per_source: int | None = None
    """Keep at most this many pairs from one source document (null: no cap)."""
    max_answer_tokens: int = 400
    """Likelihood signals read at most this many answer tokens."""
    reasoning_tokens: int = 96
    """Longest reasoning generated in `reasoning` mode, in tokens."""
    checks: int = 40
    """Pairs sampled for the self-checks (the same pairs every round): each is scored against a
    mismatched answer and against another segment of its own document (AUC per signal); 0 turns
    them off."""
    injection_checks: int = 8
    """Of those, pairs scored again with injections and with harmless lines appended (verdict flips)."""

    def __post_init__(self) -> None:
        _check(1 <= self.threshold <= 5, "threshold", "must be between 1 and 5")
        _check(self.reasoning_tokens >= 1, "reasoning_tokens", "must be >= 1")
        _check(self.top_fraction is None or 0 < self.top_fraction <= 1, "top_fraction", "must be in (0, 1]")
        _check(self.target_count is None or self.target_count >= 1, "target_count", "must be >= 1")
        for key, names in (("signals", self.signals), ("combine", self.combine)):
            bad = [n for n in names if n not in SIGNALS]
            _check(not bad, key, f"unknown signal(s) {bad}; known: {', '.join(SIGNALS)}")
        _check(self.mode != "combined" or len(self.combine) >= 1, "combine", "needs at least one signal")
        _check(self.mode in ("expected", "greedy", "reasoning") or self.top_fraction is not None
               or self.target_count is not None, "top_fraction",
               f"mode {self.mode} ranks pairs: set curate.top_fraction or curate.target_count")
        _check(self.dedup is None or 0 < self.dedup <= 1, "dedup", "must be in (0, 1]")
        _check(self.max_per_source is None or self.max_per_source >= 1, "max_per_source", "must be >= 1")
        _check(self.max_answer_tokens >= 16, "max_answer_tokens", "must be >= 16")
        _check(self.injection_checks >= 0, "injection_checks", "must be >= 0")
        _check(self.checks >= 0, "checks", "must be >= 0")


@dataclass
class TrainConfig:
    backend: Literal["auto", "transformers", "unsloth"] = "auto"
    """`auto`: Unsloth when a CUDA GPU and the package exist, else transformers + peft."""
    quantize: Literal["nf4", "none"] = "nf4"
    """Base weights while training: 4-bit nf4 (QLoRA, bitsandbytes) or unquantized (in `dtype`). For a
    base that is itself a 4-bit GGUF, nf4 rounds the weights a second time (see recipes/quickstart)."""
    dtype: Dtype = "auto"
    """What training computes in (the base weights, nf4's compute dtype, autocast). `auto`: bf16 where
    the hardware has it (CUDA compute capability 8.0+, CPUs with avx512_bf16 or amx_bf16), float16 on
    older GPUs, float32 on other CPUs, where bf16 is emulated ~40x slower. The setting is part of a
    stage's fingerprint; what `auto` chose is recorded in the stage's counts but not fingerprinted,
    so a run resumed on another kind of machine keeps its finished trainings."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32.0
    """LoRA alpha (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input. Off by default: drawing a fresh mask for every adapted layer's
    input is slow on a CPU (measured on 2 cores, 10 steps of the seed rows: 1.24x tokens/s on
    forward rows, 1.44x on backward rows without it, loss 2.3582 vs 2.3590) and Unsloth's fast
    LoRA kernels need it off; with one epoch over a few hundred rows there is little to regularize."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Linear layers that get a LoRA."""
    learning_rate: float = 2e-4
    """Peak learning rate (LoRA usually wants 1e-4 - 2e-4; the paper's full fine-tune used 1e-5)."""
    weight_decay: float = 0.1
    """AdamW weight decay (paper: 0.1)."""
    epochs: float = 1.0
    """Passes over the training set."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: int = 4
    """Rows per step."""
    grad_accum: int = 1
    """Gradient accumulation steps (effective batch = batch_size * grad_accum)."""
    max_length: int = 512
    """Rows are cut to this many tokens."""
    max_rows: int | None = None
    """Train on at most this many rows (seed first, then curated pairs by score)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: saves memory on big models, costs ~45 % time."""
    group_by_length: bool = True
    """Batch rows of similar length (random megabatches, sorted within) so that less of each padded
    batch is padding: on the quickstart's round rows 7 % instead of 37 %, 1.32x faster per training.
    It changes which rows share a step, so results move a little; false gives random batches."""
    processes: int = 1
    """Data-parallel training processes: PyTorch DDP under torchrun, one per GPU on a machine with
    several (transformers + peft; Unsloth trains on one GPU). Each takes batch_size / processes
    rows of every step, so steps and learning rate stay those of one process. On a CPU they share
    the cores and gain nothing (benchmarks/bench_train.py --processes 2 on 2 cores: 1.09x tokens/s,
    but 40.8 s vs 35.1 s per 10-step training with the start-up of the processes)."""

    def __post_init__(self) -> None:
        _check(self.lora_r >= 1, "lora_r", "must be >= 1")
        _check(self.lora_alpha > 0, "lora_alpha", "must be > 0")
        _check(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _check(self.max_rows is None or self.max_rows >= 1, "max_rows", "must be >= 1")
        _check(self.learning_rate > 0, "learning_rate", "must be > 0")
        _check(self.epochs > 0, "epochs", "must be > 0")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _check(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        _check(self.max_length >= 32, "max_length", "must be >= 32")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1")
        _check(len(self.target_modules) >= 1, "target_modules", "needs at least one module name")
        _check(self.processes >= 1, "processes", "must be >= 1")
        _check(self.batch_size % self.processes == 0, "processes",
               f"must divide batch_size ({self.batch_size}): each process takes an equal share of a step")


@dataclass
class EvaluateConfig:
    """Offline evaluation of the base model and every round's model on the held-out seed pairs."""

    enabled: bool = True
    """Run the evaluate stage as part of `humpback run`."""
    limit: int | None = None
    """Use at most this many held-out pairs (None = all of data.heldout)."""
    max_new_tokens: int = 160
    """Longest answer each model writes for the win-rate comparison (greedy decoding)."""
    judge: str = "final"
    """Who compares answers: "final" (base + last round's adapter), "base", or a model card name /
    .gguf path."""
    ablation: bool = False
    """Did curation help? Also train on seed + a random selection of the last round's candidates of
    the same size as its curated set ("random"), and on seed + all its candidates ("all"), and
    evaluate them beside the curated models (the paper's quality-over-quantity comparison)."""
    bootstrap: int = 2000
    """Resamples of the held-out pairs for the 95 % confidence intervals (paired bootstrap)."""
    ifeval: int | Literal["all"] = "all"
    """IFEval prompts every model answers (instruction following, checked by rule): "all" = the 541,
    N = a seeded subset of N that keeps every instruction type, 0 = none."""
    ifeval_max_new_tokens: int = 1280
    """Longest IFEval answer (lm-eval's limit; the longest length demand, 1200 words, needs more)."""

    def __post_init__(self) -> None:
        _check(self.limit is None or self.limit >= 1, "limit", "must be >= 1")
        _check(self.ifeval == "all" or self.ifeval >= 0, "ifeval", 'must be >= 0 or "all"')
        _check(self.ifeval_max_new_tokens >= 1, "ifeval_max_new_tokens", "must be >= 1")
        _check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        _check(bool(self.judge.strip()), "judge", 'must name a model, "final" or "base"')
        _check(self.bootstrap >= 100, "bootstrap", "must be >= 100")


# ggml tensor types llama.cpp's quantizer writes (a K-quant on rows not a multiple of 256 falls
# back to the nearest legacy type, as llama-quantize does).
GGUF_TYPES = Literal["base", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "F16", "BF16", "F32"]


@dataclass
class ExportConfig:
    merged: bool = True
    """Also write model.gguf: the base with the final adapter merged in, one file for llama.cpp/Ollama."""
    merged_type: GGUF_TYPES = "Q8_0"
    """Type of the merged (adapted) tensors, written by llama.cpp's quantizer. "base" re-quantizes to
    the base's own type, which for a 4-bit base rounds away most of a LoRA's change (measured:
    logit-change correlation 0.4-0.5 with Q4_1 vs 0.99 with Q8_0); other tensors are copied unchanged."""


@dataclass
class Recipe:
    name: str = "humpback"
    """A label for the run; shown in the model card."""
    model: str = "smollm2-135m"
    """Model card name (see `humpback models`) or a path to a card YAML."""
    rounds: int = 2
    """Curation rounds after M0: round r scores with M(r-1) and trains M(r) (paper: 2)."""
    seed: int = 0
    """Random seed for sampling and training."""
    tags: bool = True
    """Mark the source in the system prompt, as the paper does (seed vs augmented)."""
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backward_train: TrainConfig | None = None
    """Training settings for the backward model; None = the same as `train`."""
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    """The Ray cluster used with engine.executor=ray."""

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, "rounds", "must be >= 1")
        _check(self.seed >= 0, "seed", "must be >= 0")
        # the default run folder is runs/<name>: a path here would put it (and what a rerun
        # replaces) anywhere
        _check(bool(self.name.strip()) and self.name not in (".", "..") and "/" not in self.name
               and "\\" not in self.name, "name", "must be a plain folder name (no '/', not '.' or '..')")

    def backward(self) -> TrainConfig:
        return self.backward_train or self.train

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise RecipeError(f"{key}: {why}")


# ----------------------------------------------------------------------------- building from data


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    bad = RecipeError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, key)
            except RecipeError:
                continue
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            words = ("on", "yes", "true") if value else ("off", "no", "false")
            value = next((w for w in words if w in typing.get_args(tp)), value)
        if value in typing.get_args(tp):
            return value
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_coerce(typing.get_args(tp)[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise RecipeError(f"{prefix}{key}: unknown key{hint}; allowed: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, prefix + key)
    try:
        return cls(**kwargs)
    except RecipeError as e:
        raise RecipeError(prefix + str(e)) from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: typing.Iterable[str]) -> dict[str, Any]:
    """`key.sub=value` strings -> a nested dict; values are read as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise RecipeError(f"{key}: cannot read value {raw!r}: {e}") from None
        _set_dotted(out, key.strip(), value)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def build(cls: type, overrides: typing.Iterable[str], prefix: str = "") -> Any:
    """One recipe section (e.g. TrainConfig) from `key=value` overrides, checked like a recipe."""
    return _build(cls, parse_overrides(overrides), prefix)


def from_dict(data: dict[str, Any], overrides: typing.Iterable[str] = ()) -> Recipe:
    merged = _merge(data or {}, parse_overrides(overrides))
    return _build(Recipe, merged)


def load_recipe(path: str | Path, overrides: typing.Iterable[str] = ()) -> Recipe:
    """Read a recipe YAML, apply `key.sub=value` overrides and check it. Relative paths inside
    are read from the working directory, like any command-line path."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise RecipeError(f"recipe {path}: file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"recipe {path}: is a folder, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe {path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r})") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path}: expected a mapping at the top level")
    return from_dict(data, overrides)


def _absolute(ref: str, files_only: bool = False) -> str:
    """`ref` as an absolute path when it names a file or folder from here; other references
    (builtin:seed, pydoc:topics, a model card's name, a URL) as they are. With `files_only`,
    only a .gguf or card .yaml (a folder that happens to share a card's name is not the card)."""
    p = Path(ref).expanduser()
    if ":" in ref.split("/")[0] or (files_only and not ref.endswith((".gguf", ".yaml", ".yml"))):
        return ref
    return str(p.resolve()) if p.exists() else ref


def with_absolute_paths(recipe: Recipe) -> Recipe:
    """The recipe with its relative paths made absolute from the working directory. A run saves
    this in its recipe.yaml: `humpback evaluate RUN` from another folder then reads the same files
    (and the same fingerprints) instead of finding none and redoing the corpus."""
    data = replace(recipe.data, seed=_absolute(recipe.data.seed), corpus=[_absolute(c) for c in recipe.data.corpus])
    evaluate = replace(recipe.evaluate, judge=_absolute(recipe.evaluate.judge, files_only=True))
    return replace(recipe, model=_absolute(recipe.model, files_only=True), data=data, evaluate=evaluate)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
