"""The one engine factory: every stage, command and evaluation gets its engine here.

`make` resolves a model (card name, card YAML or .gguf path) to its cached GGUF and applies the
recipe's engine settings: llama.cpp in this process (`engine.Engine`: runtime tensor type, context,
threads, extra buffers, parallel sequences) or an OpenAI-compatible server (`remote.RemoteEngine`,
engine.backend=openai). Stages only ever see a factory `adapter -> Engine` (`Engines`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Engine
    from .recipe import EngineConfig

# `engines(adapter)` or `engines(adapter, batched=False)`: an `Engines`, or any callable like it.
EngineFactory = Callable[..., "Engine"]


def resolve(model: str | Path) -> Path:
    """The local GGUF of a model card name, card YAML or .gguf path (fetched into the cache once)."""
    from .models import fetch, get_card

    return fetch(get_card(str(model)))


def make(model: str | Path, cfg: EngineConfig, adapter: str | Path | None = None, seed: int = 0) -> Engine:
    """llama.cpp on `model` (+ a GGUF LoRA `adapter`) with the recipe's engine settings; with
    engine.backend=openai, the server's copy, asked for by the adapter's model name."""
    if cfg.backend == "openai":
        from .layout import served_name
        from .remote import RemoteEngine

        # the local GGUF still gives the tokenizer and chat template (a vocab-only load)
        return RemoteEngine(resolve(model), cfg, model=served_name(adapter) if adapter else None,
                            label=Path(adapter).name if adapter else None)  # type: ignore[return-value]
    from .engine import Engine

    return Engine.from_config(resolve(model), cfg, adapter=adapter, seed=seed)


@dataclass(frozen=True)
class Engines:
    """`engines(adapter)` -> an engine on one base model with the recipe's settings: what stages
    take, so they need no engine settings. Plain data, so Ray can ship it to its workers."""

    gguf: Path
    cfg: EngineConfig
    seed: int = 0

    def __call__(self, adapter: str | Path | None = None, batched: bool = True) -> Engine:
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
        from .models import runtime_gguf

        return configured_parallel(runtime_gguf(self.gguf, self.cfg.runtime_type), self.cfg)


def factory(model: str | Path, cfg: EngineConfig, seed: int = 0) -> Engines:
    """The engines of one base model (card name, card YAML or .gguf path)."""
    return Engines(resolve(model), cfg, seed)


def settings(cfg: EngineConfig, gguf: str | Path | None = None) -> dict[str, object]:
    """What an engine built from `cfg` would use on this machine (`humpback models` shows it)."""
    from . import engine

    return engine.settings(cfg, gguf)
