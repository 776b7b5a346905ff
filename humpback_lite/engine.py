"""llama.cpp inference: a quantized GGUF base plus an optional GGUF LoRA adapter.

`Llama` (llama-cpp-python's high-level class) loads the model and tokenizes; generation
(`generate_many`: several sequences per decode, continuous batching) and scoring (next-token logits,
token log-probs read only at the rows needed, no `logits_all` buffer) use its low-level binding.
Chat prompts are rendered with the GGUF's own template, the one training uses too.
Every GGUF the project runs is loaded here (`Engine`; stages get theirs from `engines.make`, which
applies a recipe's engine settings through `Engine.from_config`), so model parameters such as
`extra_buffers` apply everywhere. Knows nothing of training.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import crashguard, models
from .crashguard import quiet_stderr
from .hardware import cpu_flags, physical_cores  # noqa: F401 (physical_cores: part of this module's API)
from .models import ContextError, ModelError, check_gguf, gguf_header
from .runtime import describe as describe_runtime
from .runtime import runtime_path

if TYPE_CHECKING:
    from .recipe import EngineConfig

ExtraBuffers = Literal["auto", "on", "off"]
AMX_FLAGS = {"amx_tile", "amx_int8", "amx_bf16"}


@dataclass
class DigitScore:
    """The rubric score read from the next-token distribution after `Score:`."""

    probs: list[float]  # P("1") .. P("5"), renormalised over the five digits
    mass: float  # share of the whole distribution that fell on the five digits

    @property
    def expected(self) -> float:
        return sum((i + 1) * p for i, p in enumerate(self.probs))

    @property
    def argmax(self) -> int:
        return int(np.argmax(self.probs)) + 1


def cxx_runtimes(libraries: Sequence[str | Path]) -> dict[int, list[str]]:
    """Which copy of the C++ standard library each shared library uses, keyed by the address of
    that copy's `std::locale::classic()` (a library without C++ is left out).

    Why: a llama-cpp-python compiled by a toolchain that links libstdc++ statically (seen on the
    H200 host, whose CC/CXX point to a GCC under /opt/gcc: libggml.so.0 held 3,884 libstdc++
    symbols and no libstdc++.so.6 among its needs) gives libggml, libggml-base and libllama each
    their own copy; llama.cpp's tokenizer then mixes their locale data inside std::regex and dies
    of SIGSEGV while loading any BPE model. `dlsym` through a library's handle finds its own copy
    first, else the shared one, so more than one address means more than one runtime."""
    out: dict[int, list[str]] = {}
    for path in libraries:
        try:
            fn = ctypes.CDLL(str(path))._ZNSt6locale7classicEv
        except (OSError, AttributeError):
            continue
        out.setdefault(ctypes.cast(fn, ctypes.c_void_p).value or 0, []).append(Path(path).name)
    return out


@functools.cache
def check_cxx_runtime() -> None:
    """Refuse, with the way out, a llama.cpp build whose libraries carry separate C++ runtimes
    (see `cxx_runtimes`): it would die in the tokenizer with nothing said (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted({p.resolve() for p in lib.glob("lib*.so*")})
    copies = cxx_runtimes(libs)
    if len(copies) > 1:
        own = sorted(n for names in copies.values() for n in names)
        raise ModelError(
            f"this llama-cpp-python ({lib}) carries {len(copies)} separate copies of the C++ standard "
            f"library ({', '.join(own)}): its compiler linked libstdc++ statically, and llama.cpp's "
            "tokenizer crashes with such a build. Reinstall it with the system compiler, e.g. "
            "CC=gcc CXX=g++ pip install --force-reinstall --no-cache-dir --no-deps "
            "'llama-cpp-python>=0.3.36,<0.4' (keep CMAKE_ARGS for a GPU build).")


def use_extra_buffers(setting: ExtraBuffers) -> bool:
    """Whether llama.cpp may put CPU weights in its extra buffer types (AMX tiles, repacked
    layouts). `auto` turns them off on CPUs with AMX: there quantized GGUFs (Q4_0, Q4_1, Q8_0)
    crash inside `ggml_backend_amx_mul_mat` (ggml-org/llama.cpp#20824); elsewhere they stay on.
    Measured speeds per tensor type: docs/hardware.md."""
    if setting == "auto":
        return not (AMX_FLAGS & cpu_flags())
    return setting == "on"


_params_lock = threading.Lock()


@contextlib.contextmanager
def _default_params(model: dict[str, object], context: dict[str, object]) -> Iterator[None]:
    """Set llama_model_params / llama_context_params fields that `Llama()` has no argument for.

    Why this way: `Llama.__init__` builds its params from `llama_*_default_params()` and loads
    the model in the same call, with no hook in between; wrapping those two functions for the
    length of the constructor sets the fields without re-implementing the constructor."""
    import llama_cpp.llama_cpp as lib

    wanted = {"llama_model_default_params": (lib.llama_model_params, model),
              "llama_context_default_params": (lib.llama_context_params, context)}
    for struct, fields in wanted.values():
        if missing := [k for k in fields if k not in dict(struct._fields_)]:
            raise ModelError(f"this llama-cpp-python has no parameter(s) {missing}; upgrade it (>=0.3.36)")
    with _params_lock:
        originals = {name: getattr(lib, name) for name in wanted}

        def patch(name: str, fields: dict[str, object]):
            def patched():
                params = originals[name]()
                for k, v in fields.items():
                    setattr(params, k, v)
                return params
            return patched

        for name, (_, fields) in wanted.items():
            setattr(lib, name, patch(name, fields))
        try:
            yield
        finally:
            for name, fn in originals.items():
                setattr(lib, name, fn)


@dataclass
class _Sequence:
    """One prompt in flight in `Engine.generate_many`: its KV sequence id, tokens still to
    evaluate, sampler and what it generated."""

    index: int
    seq: int
    pending: list[int]
    sampler: object
    n_past: int = 0
    generated: list[int] = field(default_factory=list)
    logits_at: int = -1  # batch row holding this sequence's next-token logits, -1 if none this step


# llama.cpp's CPU kernels compute a token's row one way in a decode of one row (matrix-vector
# products) and, with flash attention, in a decode of fewer than 64 rows (its tile size; that path
# accumulates V in f16), and another way in a larger decode; the KV rows it leaves behind differ
# with them. Measured on SmolLM2-135M (BF16): next-token logits after a cached prefix differ from
# the cold ones by up to 0.23 with a 1-row tail, and with flash attention by 0.20 with a 5-row
# tail and 0.03 at n_batch 64; with every decode >= 64 rows they are equal to the bit. So scoring
# decodes at least MIN_ROWS rows (going back over cached positions when a tail is shorter) and
# never builds on a prefix a shorter pass left: a pass's log-probs then do not depend on what was
# cached before it (resumed and distributed runs rest on this).
MIN_ROWS = 64


def decode_spans(start: int, end: int, n_batch: int) -> list[tuple[int, int]]:
    """The [at, stop) token ranges of the decodes that bring a cache holding `start` tokens of a
    sequence to `end` (none when it holds them all): from `end - MIN_ROWS` at the latest (0 for a
    shorter sequence), `n_batch` rows each, the last two split evenly when the last would have
    fewer than MIN_ROWS."""
    if start >= end:
        return []  # nothing new to compute
    at = max(0, min(start, end - MIN_ROWS))
    spans = []
    while at < end:
        stop = min(end, at + n_batch)
        if 0 < end - stop < MIN_ROWS:
            stop = at + (end - at + 1) // 2
        spans.append((at, stop))
        at = stop
    return spans


def shared_prefix(cached: Sequence[int], tokens: Sequence[int], limit: int | None = None) -> int:
    """How many leading tokens a pass over `tokens` may reuse from a cache holding `cached`: the
    common prefix (at most `limit`), or none when `cached` is shorter than MIN_ROWS (a short pass
    is decoded in one short decode, whose rows a longer pass must not build on)."""
    if len(cached) < MIN_ROWS:
        return 0
    n = min(len(cached), len(tokens)) if limit is None else min(len(cached), len(tokens), limit)
    k = 0
    while k < n and cached[k] == tokens[k]:
        k += 1
    return k


KV_BUDGET = 1 << 30  # bytes of KV cache `auto_parallel` fills
# measured: 32 sequences instead of 16 make short-prompt answers 1.2-1.3x and augment 1.0-1.1x faster, but
# need twice the KV cache at one n_ctx; the quickstart sets 32 x 1024 tokens (docs/performance.md)
MAX_PARALLEL = 16


def kv_bytes_per_token(gguf: str | Path) -> int:
    """Bytes of f16 K and V one token takes in llama.cpp's cache, from the GGUF's header."""
    meta = gguf_header(gguf).metadata

    def get(key: str) -> int | None:
        return int(meta[key]) if key in meta else None

    arch = meta["general.architecture"]
    heads = get(f"{arch}.attention.head_count") or 1
    kv_heads = get(f"{arch}.attention.head_count_kv") or heads
    head_dim = get(f"{arch}.attention.key_length") or (get(f"{arch}.embedding_length") or 0) // heads
    return 2 * 2 * (get(f"{arch}.block_count") or 1) * kv_heads * head_dim


def auto_parallel(gguf: str | Path, n_ctx: int) -> int:
    """Sequences in flight by default: as many as fit `KV_BUDGET` at `n_ctx` each, 1 to 16."""
    return max(1, min(MAX_PARALLEL, KV_BUDGET // max(1, n_ctx * kv_bytes_per_token(gguf))))


def configured_parallel(runtime_path: str | Path, cfg: EngineConfig) -> int:
    """The sequences an engine built from `cfg` runs at once: `engine.parallel`, or `auto_parallel`."""
    return cfg.parallel or auto_parallel(runtime_path, cfg.n_ctx)


def settings(cfg: EngineConfig, gguf: str | Path | None = None) -> dict[str, object]:
    """What an engine built from `cfg` would use on this machine (for `humpback models`)."""
    out: dict[str, object] = {
        "threads": cfg.n_threads or physical_cores(),
        "extra_buffers": f"{'on' if use_extra_buffers(cfg.extra_buffers) else 'off'} ({cfg.extra_buffers}; "
                         f"AMX {'yes' if AMX_FLAGS & cpu_flags() else 'no'})",
        "flash_attn": cfg.flash_attn,
        "runtime_type": describe_runtime(Path(gguf) if gguf is not None else None, cfg), "n_ctx per sequence": cfg.n_ctx, "n_batch": cfg.n_batch,
    }
    if gguf is not None:
        parallel = configured_parallel(gguf, cfg)
        kv = parallel * cfg.n_ctx * kv_bytes_per_token(gguf)
        out["parallel"] = f"{parallel} ({'set' if cfg.parallel else 'auto'}; KV cache {kv / 2**20:.0f} MiB)"
    return out


class Prompting:
    """What a prompt looks like to the model: its chat template and tokenizer, read from the GGUF.
    Shared by the in-process engine and the remote one (remote.py), so both send the same bytes."""

    llm: Any  # a llama_cpp.Llama (a vocab-only one is enough)
    gguf: Path

    def _init_prompting(self, chat_template: str | None) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = chat_template or models.chat_template(self.gguf)
        model = self.llm._model
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        self._fmt = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )
        # A base model given the default ChatML has no <|im_end|> token: the turn's end is text,
        # so generation stops on that text (a ChatML model's own token ends it as end-of-generation).
        marker = models.END_OF_TURN
        self.turn_stops: tuple[str, ...] = (marker,) if marker in template and len(self.tokenize(marker)) > 1 else ()
        self._digits = self.digit_tokens()

    def format(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        """Render chat messages with the model's template, opening the assistant turn."""
        return self._fmt(messages=messages).prompt + assistant_prefix

    def tokenize(self, text: str) -> list[int]:
        # special=True so template markers become control tokens; untrusted text has had them
        # stripped by prompts.sanitize(). add_bos=False: templates that want BOS include it.
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def truncate(self, text: str, max_tokens: int) -> str:
        toks = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if len(toks) <= max_tokens:
            return text
        return self.detokenize(toks[:max_tokens], special=False)

    def detokenize(self, tokens: list[int], special: bool = True) -> str:
        """The text of `tokens` (with `special`, control tokens written out: the inverse of `tokenize`)."""
        return b"".join(self._piece(t, special) for t in tokens).decode("utf-8", errors="ignore")

    def _piece(self, token: int, special: bool) -> bytes:
        # Our own token_to_piece call: llama-cpp-python's detokenize gives each token a 32-byte
        # buffer and drops longer pieces (SmolLM2 has 35-dash tokens, common in docs tables).
        import llama_cpp

        vocab = self.llm._model.vocab
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def digit_tokens(self, label: str = "Score:", digits: str = "12345") -> tuple[str, list[int]]:
        """Find how this tokenizer writes a digit after `label`: either `label` + ` N` (one
        token with the space) or `label ` + `N`. Returns (prompt suffix, one token id per digit)."""
        for suffix, fmt in ((label, " {}"), (label + " ", "{}")):
            base = self.llm.tokenize(suffix.encode(), add_bos=False, special=False)
            ids = []
            for d in digits:
                full = self.llm.tokenize((suffix + fmt.format(d)).encode(), add_bos=False, special=False)
                if full[: len(base)] == base and len(full) == len(base) + 1:
                    ids.append(full[-1])
            if len(ids) == len(digits):
                return suffix, ids
        raise ModelError(f"{self.gguf}: cannot find single tokens for the digits {digits} after {label!r}")

    @property
    def score_prefix(self) -> str:
        return self._digits[0]


class Engine(Prompting):
    """llama.cpp in this process, on one GGUF (+ a LoRA adapter): the `engines.EngineLike` stages use."""

    threadsafe = False  # one llama.cpp context: calls from several threads would interleave its KV cache

    def __init__(
        self,
        gguf: str | Path,
        adapter: str | Path | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        seed: int = 0,
        chat_template: str | None = None,
        extra_buffers: ExtraBuffers = "auto",
        parallel: int = 1,
        flash_attn: bool = False,
    ):
        from llama_cpp import Llama

        self.gguf = Path(gguf)
        check_gguf(self.gguf)
        check_cxx_runtime()
        if adapter is not None:
            from .adapters import check_adapter

            check_gguf(Path(adapter))
            check_adapter(adapter, self.gguf)
        self.extra_buffers = use_extra_buffers(extra_buffers)
        # the known AMX crash (llama.cpp#20824) needs extra buffers on an AMX CPU; elsewhere the
        # advice would mislead
        self._crash_hint = ("This CPU has AMX and extra buffers are on: engine.extra_buffers=off avoids a "
                            "known llama.cpp crash." if self.extra_buffers and AMX_FLAGS & cpu_flags() else "")
        self.name = self.gguf.name + (f" + {Path(adapter).name}" if adapter else "")
        crashguard.install()  # before quiet_stderr redirects fd 2
        crashguard.route_llama_log()
        try:
            # `parallel` sequences, each with its own n_ctx cells of the KV cache (llama.cpp splits
            # the cache per sequence unless kv_unified is set; attention then reads only its own).
            with (quiet_stderr(), self._native("load"),
                  _default_params({"use_extra_bufts": self.extra_buffers}, {"n_seq_max": parallel})):
                self.llm = Llama(
                    model_path=str(self.gguf),
                    lora_path=str(adapter) if adapter else None,
                    n_ctx=n_ctx * parallel,
                    n_threads=n_threads or physical_cores(),
                    n_batch=max(n_batch, parallel),  # every sequence's next token fits one decode
                    n_gpu_layers=n_gpu_layers,
                    seed=seed,
                    flash_attn=flash_attn,
                    verbose=bool(os.environ.get("HUMPBACK_VERBOSE")),
                )
        except (ValueError, RuntimeError) as e:
            what = f"{self.gguf}" + (f" with adapter {adapter}" if adapter else "")
            log = crashguard.log_tail()
            raise ModelError(f"llama.cpp could not load {what}: {e} (corrupt or incompatible file?)"
                             + (f"\nllama.cpp said:\n{log}" if log else "")) from None
        self.adapter = adapter
        self.n_ctx = n_ctx
        self.parallel = parallel
        self.last_finish_reason: str | None = None
        self._init_prompting(chat_template)

    @classmethod
    def from_config(cls, gguf: str | Path, cfg: EngineConfig, adapter: str | Path | None = None,
                    seed: int = 0) -> Engine:
        """The engine a recipe describes: its runtime tensor type (converted once, cached) and
        every engine setting. Loop, single-stage commands, chat and evaluation all build it so."""
        path = runtime_path(Path(gguf), cfg)
        return cls(path, adapter=adapter, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, n_batch=cfg.n_batch,
                   n_gpu_layers=cfg.n_gpu_layers, seed=seed, extra_buffers=cfg.extra_buffers,
                   parallel=configured_parallel(path, cfg), flash_attn=cfg.flash_attn == "on")

    def _native(self, op: str):
        """Mark a call into llama.cpp, so that a crash inside it is reported with model and op."""
        return crashguard.operation(f"{op} on {self.name}", self._crash_hint)

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompt: str,
        max_tokens: int = 64,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int = 0,
        stop: Sequence[str] = (),
    ) -> str:
        """Sample a continuation of one prompt (`generate_many` with one sequence)."""
        out: list[tuple[str, str]] = []
        self.generate_many([prompt], max_tokens, temperature, top_p, [seed], stop,
                           on_done=lambda i, text, why: out.append((text, why)))
        self.last_finish_reason = out[0][1]  # "length": cut at max_tokens
        return out[0][0]

    def generate_many(
        self,
        prompts: Sequence[str],
        max_tokens: int = 64,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seeds: Sequence[int] | None = None,
        stop: Sequence[str] = (),
        on_done: Callable[[int, str, str], None] | None = None,
    ) -> list[str]:
        """Sample a continuation of every prompt, up to `parallel` sequences per llama.cpp decode
        (continuous batching: a finished sequence's slot takes the next prompt at once).

        Each sequence samples from its own logits with its own seeded sampler, so its text does not
        depend on which others share its batches (a resumed run reproduces an uninterrupted one).
        `on_done(index, text, finish_reason)` is called as each finishes ("stop" or "length")."""
        import llama_cpp as L

        stop = tuple(stop) + self.turn_stops
        tokens = [self.tokenize(p) for p in prompts]
        for i, t in enumerate(tokens):
            if not t:
                raise ModelError(f"prompt {i} is empty: nothing to continue ({self.name})")
            self._check_fits(t, max_tokens)
        seeds = list(seeds) if seeds is not None else [0] * len(prompts)
        ctx = self.llm._ctx.ctx
        mem = L.llama_get_memory(ctx)
        vocab = L.llama_model_get_vocab(self.llm._model.model)
        L.llama_memory_clear(mem, True)
        self.llm.n_tokens = 0  # the prefix cache of next_token_logits is gone
        queue = list(range(len(prompts)))[::-1]
        live: list[_Sequence] = []
        free = list(range(self.parallel))
        results: list[str] = [""] * len(prompts)
        batch = L.llama_batch_init(self.llm.n_batch, 0, 1)
        try:
            while queue or live:
                while queue and free:
                    i = queue.pop()
                    live.append(_Sequence(i, free.pop(0), list(tokens[i]), self._sampler(temperature, top_p, seeds[i])))
                if not queue:
                    self._compact(live, free, mem)
                self._fill(batch, live)
                with self._native("decode"):
                    rc = L.llama_decode(ctx, batch)
                if rc != 0:
                    raise ModelError(f"llama_decode failed ({rc}) on {self.name}\n{crashguard.log_tail()}")
                for s in [s for s in live if s.logits_at >= 0]:
                    tok = L.llama_sampler_sample(s.sampler, ctx, s.logits_at)
                    why = self._finished(s, tok, vocab, max_tokens, stop)
                    if why is None:
                        s.pending = [tok]
                        continue
                    results[s.index] = text = self._text(s.generated, stop)
                    L.llama_memory_seq_rm(mem, s.seq, -1, -1)
                    L.llama_sampler_free(s.sampler)
                    s.sampler = None
                    live.remove(s)
                    free.append(s.seq)
                    free.sort()
                    if on_done:
                        on_done(s.index, text, why)
        finally:
            for s in live:
                L.llama_sampler_free(s.sampler)
                L.llama_memory_seq_rm(mem, s.seq, -1, -1)
            L.llama_batch_free(batch)
        return results

    def _fill(self, batch, live: list[_Sequence]) -> None:
        """One decode's tokens: every generating sequence's last token, then as much of the waiting
        prompts as `n_batch` allows; logits only where a sequence's next token is due. Laid out in
        ascending sequence id: llama.cpp then decodes all sequences in one micro-batch (with the KV
        cache split per sequence it only groups consecutive ids)."""
        budget = self.llm.n_batch - sum(1 for s in live if len(s.pending) == 1)
        n = 0
        for s in sorted(live, key=lambda s: s.seq):
            take = s.pending if len(s.pending) == 1 else s.pending[: max(0, budget)]
            if len(s.pending) > 1:
                budget -= len(take)
            for j, tok in enumerate(take):
                batch.token[n + j] = tok
                batch.pos[n + j] = s.n_past + j
                batch.n_seq_id[n + j] = 1
                batch.seq_id[n + j][0] = s.seq
                batch.logits[n + j] = False
            s.logits_at = -1
            if take and len(take) == len(s.pending):
                batch.logits[n + len(take) - 1] = True
                s.logits_at = n + len(take) - 1
            s.n_past += len(take)
            s.pending = s.pending[len(take):]
            n += len(take)
        batch.n_tokens = n

    @staticmethod
    def _compact(live: list[_Sequence], free: list[int], mem) -> None:
        """With no prompt left to start, move the highest sequences into the lowest free ids (their
        KV copied by llama.cpp at the next decode), so that the ids in flight stay 0..k-1 and the
        last sequences still share one micro-batch instead of one each."""
        import llama_cpp as L

        while free and live and free[0] < max(s.seq for s in live):
            s = max(live, key=lambda s: s.seq)
            hole = free.pop(0)
            L.llama_memory_seq_cp(mem, s.seq, hole, -1, -1)
            L.llama_memory_seq_rm(mem, s.seq, -1, -1)
            free.append(s.seq)
            free.sort()
            s.seq = hole

    def _sampler(self, temperature: float, top_p: float, seed: int):
        """top-p then temperature then a draw seeded per sequence (greedy at temperature 0)."""
        import llama_cpp as L

        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(top_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(temperature))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _finished(self, s: _Sequence, tok: int, vocab, max_tokens: int, stop: Sequence[str]) -> str | None:
        import llama_cpp as L

        if L.llama_vocab_is_eog(vocab, tok):
            return "stop"
        s.generated.append(tok)
        if stop and any(x in self._text(s.generated, ()) for x in stop):
            return "stop"
        return "length" if len(s.generated) >= max_tokens else None

    def _text(self, generated: list[int], stop: Sequence[str]) -> str:
        text = self.detokenize(generated, special=False)
        for x in stop:
            text = text.split(x, 1)[0]
        return text

    # ------------------------------------------------------------------ scoring

    def _eval_reusing_prefix(self, tokens: list[int]) -> None:
        """Evaluate `tokens` up to the logits of the last one, keeping the KV cache of the longest
        prefix shared with the last call (the rubric, identical for every pair, is evaluated once)."""
        llm = self.llm
        # at least one token must run to get logits
        k = shared_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens, len(tokens) - 1)
        llm.n_tokens = 0  # until the decodes below have run
        self._decode(tokens, k, [len(tokens) - 1])  # the logits next_token_logits reads
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)

    def next_token_logits(self, tokens: list[int]) -> np.ndarray:
        self._check_fits(tokens, 1)
        self._eval_reusing_prefix(tokens)
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        n_vocab = self.llm.n_vocab()
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)).copy()

    def digit_score(self, prompt: str) -> DigitScore:
        """`prompt` must end with `self.score_prefix`. One forward pass."""
        logits = self.next_token_logits(self.tokenize(prompt)).astype(np.float64)
        m = logits.max()
        logz = m + math.log(np.exp(logits - m).sum())
        ids = self._digits[1]
        lp = logits[ids] - logz
        mass = float(np.exp(lp).sum())
        probs = np.exp(lp - lp.max())
        probs /= probs.sum()
        return DigitScore(probs=[float(p) for p in probs], mass=mass)

    def choice_probs(self, prompt: str, ids: list[int]) -> list[float]:
        """P(each token of `ids`) as the next token after `prompt`, renormalised over them."""
        return self._choice(self.tokenize(prompt), ids)

    def choice_probs_many(self, prompts: Sequence[str], ids: list[int]) -> list[list[float]]:
        """`choice_probs` of every prompt, in the order given. They run in token order from an
        empty cache, so prompts that open alike (one answer judged against several others) evaluate
        their common opening once, and the results depend only on `prompts`."""
        tokens = [self.tokenize(p) for p in prompts]
        self.llm.n_tokens = 0
        out: list[list[float]] = [[] for _ in prompts]
        for i in sorted(range(len(tokens)), key=lambda i: tokens[i]):
            out[i] = self._choice(tokens[i], ids)
        return out

    def _choice(self, tokens: list[int], ids: list[int]) -> list[float]:
        logits = self.next_token_logits(tokens).astype(np.float64)[ids]
        p = np.exp(logits - logits.max())
        return [float(x) for x in p / p.sum()]

    def token_logprobs(self, context: list[int], target: list[int]) -> np.ndarray:
        """log P(target[i] | context + target[:i]) for every target token, in one pass."""
        return self.token_logprobs_many([(context, target)])[0]

    def token_logprobs_many(self, passes: Sequence[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """`token_logprobs` of every (context, target), in the order given.

        Built on llama.cpp's batch API with logits requested only at the positions that predict
        a target token, so no (n_ctx x n_vocab) `logits_all` buffer is allocated. The passes run in
        token order, each keeping the KV cache and the log-probs of the longest prefix it shares
        with the one before: copies of a pair that differ only at the end (the injection checks)
        or passes that share an answer cost only their differing tokens. The call starts and ends
        with an empty cache, so its results depend only on `passes`."""
        llm = self.llm
        for context, target in passes:
            if not context:
                raise ModelError(f"a scored text needs a context before it ({self.name})")
            self._check_fits(context + target, 0)
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.n_tokens = 0  # the prefix cache of next_token_logits is gone now
        held: list[int] = []  # the tokens whose KV is in the cache
        known: dict[int, float] = {}  # position -> log P(held[position + 1] | held[:position + 1])
        out: list[np.ndarray] = [np.empty(0)] * len(passes)
        try:
            for i in sorted(range(len(passes)), key=lambda i: passes[i][0] + passes[i][1]):
                context, target = passes[i]
                held, known = self._logprobs_after(held, known, context + target, len(context) - 1)
                out[i] = np.array([known[p] for p in range(len(context) - 1, len(held) - 1)], dtype=np.float64)
        finally:
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        return out

    def _logprobs_after(self, held: list[int], known: dict[int, float], tokens: list[int],
                        first: int) -> tuple[list[int], dict[int, float]]:
        """Bring the cache from `held` to `tokens`, computing the log-probs at positions >= first
        that `known` lacks; returns the new (held, known)."""
        shared = shared_prefix(held, tokens)
        known = {p: v for p, v in known.items() if p + 1 < shared}  # facts about tokens[:shared] still
        # Restart at the first position whose log-prob is missing: llama.cpp gives logits only for
        # the tokens of the current decode, so that position's KV row is computed again.
        start = min(shared, next((p for p in range(first, len(tokens) - 1) if p not in known), len(tokens)))
        n_vocab = self.llm.n_vocab()

        def keep(positions: list[int], rows: np.ndarray) -> None:
            nxt = np.array([tokens[p + 1] for p in positions])
            m = rows.max(axis=1)
            logz = m + np.log(np.exp(rows - m[:, None]).sum(axis=1))
            for p, v in zip(positions, rows[np.arange(len(positions)), nxt] - logz, strict=True):
                known[p] = float(v)

        wanted = range(first, len(tokens) - 1)
        self._decode(tokens, start, wanted, lambda positions, ptr: keep(positions, np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(len(positions), n_vocab))))
        return list(tokens), known

    def _decode(self, tokens: list[int], start: int, wanted: Sequence[int],
                take: Callable[[list[int], Any], None] | None = None) -> None:
        """Decode `tokens[start:]` on top of the cached `tokens[:start]` (going back to
        `decode_spans`' start), with logits at the positions in `wanted`; after each decode that has
        some, `take(positions, pointer to their logit rows)` if given."""
        import llama_cpp

        llm = self.llm
        spans = decode_spans(start, len(tokens), llm.n_batch)
        llm._ctx.kv_cache_seq_rm(-1, spans[0][0] if spans else len(tokens), -1)
        want = set(wanted)
        for at, stop in spans:
            chunk = tokens[at:stop]
            llm._batch.set_batch(batch=chunk, n_past=at, logits_all=False)
            positions = [at + j for j in range(len(chunk)) if at + j in want]
            for j in range(len(chunk)):
                llm._batch.batch.logits[j] = at + j in want
            with self._native("decode"):
                llm._ctx.decode(llm._batch)
            if positions and take is not None:
                # llama_get_logits: the requested rows, in batch order, one contiguous block
                take(positions, llama_cpp.llama_get_logits(llm._ctx.ctx))

    def _check_fits(self, tokens: list[int], new: int) -> None:
        if len(tokens) + new > self.n_ctx:
            raise ContextError(f"a prompt of {len(tokens)} tokens + {new} new tokens does not fit the context of "
                               f"{self.n_ctx} tokens ({self.name}); raise engine.n_ctx or shorten the input")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.close()
