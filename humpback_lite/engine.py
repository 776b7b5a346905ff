"""llama.cpp inference: a quantized GGUF base plus an optional GGUF LoRA adapter.

Generation goes through llama-cpp-python's high-level API; scoring reads next-token logits
through its low-level binding (`llama_get_logits_ith`) so no `logits_all` buffer is needed.
Chat prompts are rendered with the GGUF's own template, the one training uses too.
Knows nothing of training.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .models import ModelError, check_gguf, quiet_stderr

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
    ):
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.gguf = Path(gguf)
        check_gguf(self.gguf)
        if adapter is not None:
            check_gguf(Path(adapter))
        try:
            with quiet_stderr():
                self.llm = Llama(
                    model_path=str(self.gguf),
                    lora_path=str(adapter) if adapter else None,
                    n_ctx=n_ctx,
                    n_threads=n_threads or max(1, (os.cpu_count() or 2)),
                    n_batch=n_batch,
                    n_gpu_layers=n_gpu_layers,
                    seed=seed,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as e:
            what = f"{self.gguf}" + (f" with adapter {adapter}" if adapter else "")
            raise ModelError(f"llama.cpp could not load {what}: {e} (corrupt or incompatible file?)") from None
        self.adapter = adapter
        self.n_ctx = n_ctx
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
            raise ValueError(f"prompt of {len(tokens)} tokens + {new} new does not fit n_ctx={self.n_ctx}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.close()
