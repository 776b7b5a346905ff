"""The one engine factory: every stage, command and evaluation gets its engine here.

`make` resolves a model (card name, card YAML or .gguf path) to its cached GGUF and applies the
recipe's engine settings (runtime tensor type, context, threads, extra buffers). Other inference
backends plug in here; stages only ever see a factory `adapter -> Engine`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Engine
    from .recipe import EngineConfig

# `factory(adapter)` or `factory(adapter, batched=False)`: an engine that only scores needs one
# sequence's KV cache, not `engine.parallel` of them.
EngineFactory = Callable[..., "Engine"]


def resolve(model: str | Path) -> Path:
    """The local GGUF of a model card name, card YAML or .gguf path (fetched into the cache once)."""
    from .models import fetch, get_card

    return fetch(get_card(str(model)))


def make(model: str | Path, cfg: EngineConfig, adapter: str | Path | None = None, seed: int = 0) -> Engine:
    """llama.cpp on `model` (+ a GGUF LoRA `adapter`) with the recipe's engine settings."""
    from .engine import Engine

    return Engine.from_config(resolve(model), cfg, adapter=adapter, seed=seed)


def factory(model: str | Path, cfg: EngineConfig, seed: int = 0) -> EngineFactory:
    """`adapter -> Engine` for one base model: what stages take, so they need no engine settings."""
    from dataclasses import replace

    gguf = resolve(model)
    single = replace(cfg, parallel=1)
    return lambda adapter=None, batched=True: make(gguf, cfg if batched else single, adapter=adapter, seed=seed)


def settings(cfg: EngineConfig, gguf: str | Path | None = None) -> dict[str, object]:
    """What an engine built from `cfg` would use on this machine (`humpback models` shows it)."""
    from . import engine

    return engine.settings(cfg, gguf)
