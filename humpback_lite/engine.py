"""llama.cpp inference: a quantized GGUF base plus an optional GGUF LoRA adapter.

Generation goes through llama-cpp-python's high-level API; scoring reads next-token logits
through its low-level binding (`llama_get_logits_ith`) so no `logits_all` buffer is needed.
Chat prompts are rendered with the GGUF's own template, the one training uses too.
Every GGUF the project runs is loaded here (`Engine`; stages get theirs from `engines.make`,
which applies a recipe's engine settings through `Engine.from_config`), so model parameters such as `extra_buffers` apply everywhere.
Knows nothing of training.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from . import crashguard
from .models import ContextError, ModelError, check_gguf, quiet_stderr, runtime_gguf

if TYPE_CHECKING:
    from .recipe import EngineConfig

ExtraBuffers = Literal["auto", "on", "off"]
AMX_FLAGS = {"amx_tile", "amx_int8", "amx_bf16"}

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def use_extra_buffers(setting: ExtraBuffers) -> bool:
    """Whether llama.cpp may put CPU weights in its extra buffer types (AMX tiles, repacked
    layouts). `auto` turns them off on CPUs with AMX: there quantized GGUFs (Q4_0, Q4_1, Q8_0)
    crash inside `ggml_backend_amx_mul_mat` (ggml-org/llama.cpp#20824); elsewhere they stay on.
    Measured speeds per tensor type: README, "CPUs"."""
    if setting == "auto":
        return not (AMX_FLAGS & cpu_flags())
    return setting == "on"


_params_lock = threading.Lock()


@contextlib.contextmanager
def _model_params(**fields: object) -> Iterator[None]:
    """Set llama_model_params fields that `Llama()` has no argument for.

    Why this way: `Llama.__init__` builds its params from `llama_model_default_params()` and loads
    the model in the same call, with no hook in between; wrapping that one function for the
    length of the constructor sets the fields without re-implementing the constructor."""
    import llama_cpp.llama_cpp as lib

    missing = [k for k in fields if k not in dict(lib.llama_model_params._fields_)]
    if missing:
        raise ModelError(f"this llama-cpp-python has no model parameter(s) {missing}; upgrade it (>=0.3.36)")
    with _params_lock:
        original = lib.llama_model_default_params

        def patched():
            params = original()
            for k, v in fields.items():
                setattr(params, k, v)
            return params

        lib.llama_model_default_params = patched
        try:
            yield
        finally:
            lib.llama_model_default_params = original


class Engine:
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
    ):
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.gguf = Path(gguf)
        check_gguf(self.gguf)
        if adapter is not None:
            from .adapters import check_adapter

            check_gguf(Path(adapter))
            check_adapter(adapter, self.gguf)
        self.extra_buffers = use_extra_buffers(extra_buffers)
        self.name = self.gguf.name + (f" + {Path(adapter).name}" if adapter else "")
        crashguard.install()  # before quiet_stderr redirects fd 2
        try:
            with quiet_stderr(), _model_params(use_extra_bufts=self.extra_buffers), self._native("load"):
                self.llm = Llama(
                    model_path=str(self.gguf),
                    lora_path=str(adapter) if adapter else None,
                    n_ctx=n_ctx,
                    n_threads=n_threads or max(1, (os.cpu_count() or 2)),
                    n_batch=n_batch,
                    n_gpu_layers=n_gpu_layers,
                    seed=seed,
                    verbose=bool(os.environ.get("HUMPBACK_VERBOSE")),
                )
        except (ValueError, RuntimeError) as e:
            what = f"{self.gguf}" + (f" with adapter {adapter}" if adapter else "")
            log = crashguard.log_tail()
            raise ModelError(f"llama.cpp could not load {what}: {e} (corrupt or incompatible file?)"
                             + (f"\nllama.cpp said:\n{log}" if log else "")) from None
        self.adapter = adapter
        self.n_ctx = n_ctx
        self.last_finish_reason: str | None = None
        meta = self.llm.metadata
        template = chat_template or meta.get("tokenizer.chat_template") or CHATML
        model = self.llm._model
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        self._fmt = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )
        self._digits = self.digit_tokens()

    @classmethod
    def from_config(cls, gguf: str | Path, cfg: EngineConfig, adapter: str | Path | None = None,
                    seed: int = 0) -> Engine:
        """The engine a recipe describes: its runtime tensor type (converted once, cached) and
        every engine setting. Loop, single-stage commands, chat and evaluation all build it so."""
        return cls(runtime_gguf(Path(gguf), cfg.runtime_type), adapter=adapter, n_ctx=cfg.n_ctx,
                   n_threads=cfg.n_threads, n_batch=cfg.n_batch, n_gpu_layers=cfg.n_gpu_layers, seed=seed,
                   extra_buffers=cfg.extra_buffers)

    def _native(self, op: str):
        """Mark a call into llama.cpp, so that a crash inside it is reported with model and op."""
        return crashguard.operation(f"{op} on {self.name}")

    # ------------------------------------------------------------------ text and tokens

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
        return self.llm.detokenize(toks[:max_tokens]).decode("utf-8", errors="ignore")

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
        """Sample a continuation. The context is reset first, so the result depends only on the
        prompt and seed (a resumed run reproduces an uninterrupted one)."""
        tokens = self.tokenize(prompt)
        self._check_fits(tokens, max_tokens)
        self.llm.reset()
        with self._native("generate"):
            out = self.llm.create_completion(
                tokens,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=0,
                min_p=0.0,
                repeat_penalty=1.0,
                seed=seed,
                stop=list(stop) or None,
            )
        self.last_finish_reason = out["choices"][0].get("finish_reason")  # "length": cut at max_tokens
        return out["choices"][0]["text"]

    # ------------------------------------------------------------------ scoring

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

    def _eval_reusing_prefix(self, tokens: list[int]) -> None:
        """Evaluate `tokens`, keeping the KV cache of the longest prefix shared with the last
        call (the rubric, identical for every pair, is evaluated once)."""
        llm = self.llm
        cached = llm.input_ids[: llm.n_tokens]
        k = 0
        limit = min(len(cached), len(tokens) - 1)  # at least one token must run to get logits
        while k < limit and cached[k] == tokens[k]:
            k += 1
        llm.n_tokens = k
        with self._native("eval"):
            llm.eval(tokens[k:])

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
        logits = self.next_token_logits(self.tokenize(prompt)).astype(np.float64)[ids]
        p = np.exp(logits - logits.max())
        return [float(x) for x in p / p.sum()]

    def token_logprobs(self, context: list[int], target: list[int]) -> np.ndarray:
        """log P(target[i] | context + target[:i]) for every target token, in one pass.

        Built on llama.cpp's batch API with logits requested only at the positions that predict
        a target token, so no (n_ctx x n_vocab) `logits_all` buffer is allocated."""
        import llama_cpp

        tokens = context + target
        self._check_fits(tokens, 0)
        llm = self.llm
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.n_tokens = 0  # the prefix cache of next_token_logits is gone now
        first = len(context) - 1  # position whose logits predict target[0]
        out = np.empty(len(target), dtype=np.float64)
        n_vocab = llm.n_vocab()
        for start in range(0, len(tokens), llm.n_batch):
            chunk = tokens[start: start + llm.n_batch]
            llm._batch.set_batch(batch=chunk, n_past=start, logits_all=False)
            wanted = [i for i in range(len(chunk)) if first <= start + i < len(tokens) - 1]
            flags = set(wanted)
            for i in range(len(chunk)):
                llm._batch.batch.logits[i] = i in flags
            with self._native("decode"):
                llm._ctx.decode(llm._batch)
            if not wanted:
                continue
            # llama_get_logits: the requested rows, in batch order, one contiguous block
            ptr = llama_cpp.llama_get_logits(llm._ctx.ctx)
            rows = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(len(wanted), n_vocab))
            nxt = np.array([tokens[start + i + 1] for i in wanted])
            m = rows.max(axis=1)
            logz = m + np.log(np.exp(rows - m[:, None]).sum(axis=1))
            out[start + wanted[0] - first: start + wanted[-1] - first + 1] = rows[np.arange(len(wanted)), nxt] - logz
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        return out

    def _check_fits(self, tokens: list[int], new: int) -> None:
        if len(tokens) + new > self.n_ctx:
            raise ContextError(f"a prompt of {len(tokens)} tokens + {new} new tokens does not fit the context of "
                               f"{self.n_ctx} tokens ({self.name}); raise engine.n_ctx or shorten the input")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.close()
