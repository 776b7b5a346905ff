"""The engine contract: llama.cpp, the server client and the tests' fake all provide `EngineLike`,
with its signatures, so the fast lane's fake cannot drift from what the real engines do."""

from __future__ import annotations

import inspect

import pytest
from fakes import FakeEngine

from humpback_lite.engine import Engine
from humpback_lite.engines import EngineLike
from humpback_lite.remote import RemoteEngine

MEMBERS = {n: v for n, v in vars(EngineLike).items() if not n.startswith("_")}
METHODS = sorted(n for n, v in MEMBERS.items() if inspect.isfunction(v))
DATA = sorted(set(inspect.get_annotations(EngineLike)) | {n for n, v in MEMBERS.items() if isinstance(v, property)})


def _params(fn) -> list[tuple[str, object, object]]:
    """Names, kinds and defaults (annotations are strings here and may be spelled differently)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("cls", [Engine, RemoteEngine, FakeEngine], ids=lambda c: c.__name__)
def test_every_engine_provides_the_contract_with_its_signatures(cls):
    for name in METHODS:
        assert callable(getattr(cls, name, None)), f"{cls.__name__} lacks {name}()"
        assert _params(getattr(cls, name)) == _params(getattr(EngineLike, name)), f"{cls.__name__}.{name}"
    source = inspect.getsource(cls)
    for name in DATA:  # a class attribute, a property, or set on every instance in __init__
        assert hasattr(cls, name) or f"self.{name} =" in source or f"self.{name}: " in source, \
            f"{cls.__name__} lacks {name}"


def test_the_stages_import_the_contract_not_the_llama_cpp_engine():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "humpback_lite"
    for stage in ("augment", "curate", "evaluate", "signals", "chat", "loop"):
        text = (root / f"{stage}.py").read_text()
        assert "from .engine import Engine" not in text, stage
