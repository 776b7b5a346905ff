"""Stand-ins for llama.cpp and training, so orchestration, invalidation and resume are tested in
seconds. They keep the contracts the stages rely on (same input + seed -> same output; log-probs are
negative; digit scores are distributions), with numbers derived from hashes of the inputs. The
real parts are tested against the real embedded model elsewhere (marked `slow`)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from humpback_lite.engine import DigitScore
from humpback_lite.layout import TrainCounts
from humpback_lite.store import atomic_dir, atomic_path

DELAY = float(os.environ.get("FAKE_DELAY", "0"))  # seconds per model call (the kill harness)


def _h(*parts: object) -> int:
    return int(hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12], 16)


class FakeEngine:
    """Words are tokens; every number is a hash of what the model sees and of its adapter."""

    n_ctx = 4096
    parallel = 4
    threadsafe = False
    score_prefix = "Score:"

    def __init__(self, adapter: Path | None = None, log: list | None = None):
        self.adapter = adapter
        # the adapter's bytes, not its path: a retrained adapter is another model
        self.identity = _h(Path(adapter).read_bytes()) if adapter else 0
        self.last_finish_reason = "stop"
        self.log = log if log is not None else []
        self.log.append(("load", str(adapter)))

    def format(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        return "".join(f"<{m['role']}> {m['content']}\n" for m in messages) + "<assistant> " + assistant_prefix

    def tokenize(self, text: str) -> list[int]:
        return [_h(w) % 50_000 for w in text.split()]

    def truncate(self, text: str, max_tokens: int) -> str:
        words = text.split()
        return text if len(words) <= max_tokens else " ".join(words[:max_tokens])

    def generate(self, prompt: str, max_tokens: int = 64, temperature: float = 0.7, top_p: float = 0.9,
                 seed: int = 0, stop=()) -> str:
        time.sleep(DELAY)
        words = [w for w in prompt.split() if w.isalpha() and len(w) > 4] or ["this"]
        pick = [words[_h(prompt, seed, self.identity, i) % len(words)] for i in range(3)]
        return " ".join(["Explain", *pick])[: max_tokens * 8] + "?"

    def generate_many(self, prompts: list[str], max_tokens: int = 64, temperature: float = 0.7, top_p: float = 0.9,
                      seeds=None, stop=(), on_done=None) -> list[str]:
        seeds = seeds if seeds is not None else [0] * len(prompts)
        texts = [""] * len(prompts)
        for i in sorted(range(len(prompts)), key=lambda i: _h(prompts[i])):  # out of order, as batches finish
            texts[i] = self.generate(prompts[i], max_tokens, temperature, top_p, seeds[i], stop)
            if on_done:
                on_done(i, texts[i], "stop")
        return texts

    def digit_tokens(self, label: str = "Score:", digits: str = "12345") -> tuple[str, list[int]]:
        return label, list(range(1, len(digits) + 1))

    def _probs(self, prompt: str, n: int) -> list[float]:
        time.sleep(DELAY)
        raw = np.array([1 + _h(prompt, self.identity, i) % 100 for i in range(n)], dtype=float)
        return list(raw / raw.sum())

    def digit_score(self, prompt: str) -> DigitScore:
        return DigitScore(probs=self._probs(prompt, 5), mass=0.9)

    def choice_probs(self, prompt: str, ids: list[int]) -> list[float]:
        return self._probs(prompt, len(ids))

    def choice_probs_many(self, prompts: list[str], ids: list[int]) -> list[list[float]]:
        return [self.choice_probs(p, ids) for p in prompts]

    def token_logprobs(self, context: list[int], target: list[int]) -> np.ndarray:
        time.sleep(DELAY)
        # answers that share words with their context are likelier, as with a real model
        seen = set(context)
        return np.array([-(0.5 if t in seen else 2.0) - (_h(t, self.identity) % 100) / 100 for t in target])

    def token_logprobs_many(self, passes) -> list[np.ndarray]:
        return [self.token_logprobs(c, t) for c, t in passes]

    def close(self) -> None:
        self.log.append(("close", str(self.adapter)))


def fake_engines(log: list | None = None):
    """An engine factory (`adapter -> Engine`) of fakes, for `Loop.engines` and stage functions."""
    return lambda adapter=None, batched=True: FakeEngine(adapter, log)


def fake_train_run(examples, adapter_dir: Path, gguf_out: Path, card, gguf, cfg, seed=0, progress=None, label=""):
    """`train.run` without torch: the 'adapter' is a digest of what it was trained on, written
    atomically as the real one is."""
    digest = hashlib.sha256(json.dumps([examples, vars(cfg), seed], sort_keys=True, default=str).encode()).hexdigest()
    time.sleep(DELAY * 20)
    with atomic_dir(adapter_dir) as tmp:
        (tmp / "adapter_config.json").write_text(json.dumps({"r": cfg.lora_r, "fake": True}))
        (tmp / "adapter_model.safetensors").write_text(digest)
    with atomic_path(gguf_out) as tmp:
        tmp.write_text(digest)
    return TrainCounts(rows=len(examples), steps=1, train_loss=round(1 + _h(digest) % 100 / 100, 4))


def write_gguf(path: Path, fill, arch: str = "llama") -> Path:
    """A GGUF written by gguf-py: `fill(writer)` adds its keys and tensors."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def header_only_gguf(path: Path) -> Path:
    """A GGUF with SmolLM2-135M's header shape, a ChatML template and one small tensor: all the fakes need of a
    model (its header), so the orchestration tests need no model file. Written once per path."""
    if path.exists():
        return path
    template = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}"
                "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}")
    def fill(w) -> None:
        # SmolLM2-135M's attention shape: what sizes llama.cpp's KV cache (engine.kv_bytes_per_token)
        w.add_block_count(30)
        w.add_context_length(2048)
        w.add_embedding_length(576)
        w.add_head_count(9)
        w.add_head_count_kv(3)
        w.add_chat_template(template)
        w.add_tensor("token_embd.weight", np.zeros((16, 64), dtype=np.float32))

    with atomic_path(path, suffix=".gguf") as tmp:
        write_gguf(tmp, fill)
    return path
