"""The one engine factory: every stage, command and evaluation gets its engine here.

`make` resolves a model (card name, card YAML or .gguf path) to its cached GGUF and applies the
recipe's engine settings: llama.cpp in this process (`engine.Engine`: runtime tensor type, context,
threads, extra buffers, parallel sequences) or an OpenAI-compatible server (`remote.RemoteEngine`,
engine.backend=openai). Stages only ever see a factory `adapter -> EngineLike` (`Engines`) and call only what
`EngineLike` declares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from .engine import DigitScore
    from .recipe import EngineConfig


class EngineLike(Protocol):
    """What a stage may ask of a model, and all it may ask: llama.cpp in this process
    (`engine.Engine`), a server (`remote.RemoteEngine`) and the tests' `FakeEngine` provide exactly
    this (tests/test_engine_contract.py compares their signatures with it)."""

    n_ctx: int
    """Context tokens per sequence."""
    parallel: int
    """Sequences `generate_many` runs at once (a window of work is sized by it)."""
    threadsafe: bool
    """Whether stages may call it from several threads at once (a server: yes; llama.cpp: no)."""
    last_finish_reason: str | None
    """`generate`'s last reason to stop: "stop" or "length"."""

    @property
    def score_prefix(self) -> str:
        """The text a `digit_score` prompt ends with."""
        ...

    def format(self, messages: list[dict[str, str]], assistant_prefix: str = "") -> str:
        """The model's chat template applied to `messages`, opening the assistant's turn."""
        ...

    def tokenize(self, text: str) -> list[int]: ...

    def truncate(self, text: str, max_tokens: int) -> str:
        """`text` cut to at most `max_tokens` tokens."""
        ...

    def digit_tokens(self, label: str = "Score:", digits: str = "12345") -> tuple[str, list[int]]: ...

    def generate(self, prompt: str, max_tokens: int = 64, temperature: float = 0.7, top_p: float = 0.9,
                 seed: int = 0, stop: Sequence[str] = ()) -> str: ...

    def generate_many(self, prompts: Sequence[str], max_tokens: int = 64, temperature: float = 0.7,
                      top_p: float = 0.9, seeds: Sequence[int] | None = None, stop: Sequence[str] = (),
                      on_done: Callable[[int, str, str], None] | None = None) -> list[str]:
        """Each prompt's continuation; `on_done(index, text, finish_reason)` as each finishes."""
        ...

    def digit_score(self, prompt: str) -> DigitScore: ...

    def choice_probs(self, prompt: str, ids: list[int]) -> list[float]: ...

    def choice_probs_many(self, prompts: Sequence[str], ids: list[int]) -> list[list[float]]: ...

    def token_logprobs(self, context: list[int], target: list[int]) -> np.ndarray: ...

    def token_logprobs_many(self, passes: Sequence[tuple[list[int], list[int]]]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


# `engines(adapter)` or `engines(adapter, batched=False)`: an `Engines`, or any callable like it.
EngineFactory = Callable[..., EngineLike]


def resolve(model: str | Path) -> Path:
    """The local GGUF of a model card name, card YAML or .gguf path (fetched into the cache once)."""
    from .models import fetch, get_card

    return fetch(get_card(str(model)))


def make(model: str | Path, cfg: EngineConfig, adapter: str | Path | None = None, seed: int = 0) -> EngineLike:
    """llama.cpp on `model` (+ a GGUF LoRA `adapter`) with the recipe's engine settings; with
    engine.backend=openai, the server's copy, asked for by the adapter's model name."""
    if cfg.backend == "openai":
        from .layout import served_name
        from .remote import RemoteEngine

        # the local GGUF still gives the tokenizer and chat template (a vocab-only load)
        return RemoteEngine(resolve(model), cfg, model=served_name(adapter) if adapter else None,
                            label=Path(adapter).name if adapter else None)
    from .engine import Engine

    return Engine.from_config(resolve(model), cfg, adapter=adapter, seed=seed)


@dataclass(frozen=True)
class Engines:
    """`engines(adapter)` -> an engine on one base model with the recipe's settings: what stages
    take, so they need no engine settings. Plain data, so Ray can ship it to its workers."""

    gguf: Path
    cfg: EngineConfig
    seed: int = 0

    def __call__(self, adapter: str | Path | None = None, batched: bool = True) -> EngineLike:
        # an engine that only scores needs one sequence's KV cache, not `parallel` of them; a
        # remote scorer keeps its requests in flight (they cost no local memory)
        cfg = self.cfg if batched or self.cfg.backend == "openai" else replace(self.cfg, parallel=1)
        return make(self.gguf, cfg, adapter=adapter, seed=self.seed)

    @property
    def parallel(self) -> int:
        """Sequences (or requests) a batched engine from here keeps in flight."""
        # the same functions the engines themselves call: a Ray window must match the local one
        if self.cfg.backend == "openai":
            from .remote import requests_in_flight

            return requests_in_flight(self.cfg)
        from .engine import configured_parallel
        from .runtime import runtime_path

        return configured_parallel(runtime_path(self.gguf, self.cfg), self.cfg)


def factory(model: str | Path, cfg: EngineConfig, seed: int = 0) -> Engines:
    """The engines of one base model (card name, card YAML or .gguf path), with `runtime_type: auto`
    resolved here, once, so every engine built from them (in this process or a Ray worker) runs
    the same file."""
    from .runtime import pinned

    gguf = resolve(model)
    return Engines(gguf, pinned(gguf, cfg), seed)


def settings(cfg: EngineConfig, gguf: str | Path | None = None) -> dict[str, object]:
    """What an engine built from `cfg` would use on this machine (`humpback models` shows it)."""
    from . import engine

    return engine.settings(cfg, gguf)
