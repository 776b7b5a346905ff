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

EngineFactory = Callable[[Path | None], "Engine"]


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
    gguf = resolve(model)
    return lambda adapter=None: make(gguf, cfg, adapter=adapter, seed=seed)
