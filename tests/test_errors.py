"""Bad input gets one clear error naming what to change, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import FakeEngine, write_gguf

from humpback_lite.chat import Chat
from humpback_lite.cli import main
from humpback_lite.models import ContextError

ROOT = Path(__file__).resolve().parent.parent


def test_chat_message_longer_than_the_context_is_refused_and_the_chat_goes_on():
    engine = FakeEngine()
    engine.n_ctx = 60
    chat = Chat(engine, max_tokens=8)
    with pytest.raises(ContextError, match="larger --n-ctx"):
        chat.reply("word " * 100)
    assert chat.history == []
    assert chat.reply("a short question") and len(chat.history) == 2


def test_unsloth_without_a_gpu_is_one_line_with_the_fix(hf_weights, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    result = CliRunner().invoke(main, ["train", str(data), "-o", str(tmp_path / "a"), "backend=unsloth"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "train.backend=transformers" in result.output or "humpback-lite[gpu]" in result.output


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_clear_line(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    assert sum(line.startswith("error:") for line in result.output.splitlines()) == 1, result.output
    for n in needles:
        assert n in result.output, (n, result.output)


def _bad_seed(model, tmp_path, text: bytes, *needles: str) -> None:
    from conftest import TINY

    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(text)
    _one_clear_line(_cli("run", str(TINY), f"data.seed={seed}", f"model={model}", "--out", str(tmp_path / "r")),
                    *needles)


def test_seed_file_with_a_malformed_line_names_file_and_line(header_model, tmp_path):
    _bad_seed(header_model, tmp_path, b'{"instruction": "a", "output": "b"}\n{"instruction": "c", \n', "seed.jsonl:2", "not valid JSON")


def test_seed_file_with_a_missing_field_names_the_line_and_field(header_model, tmp_path):
    _bad_seed(header_model, tmp_path, b'{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', "seed.jsonl:2", "output")


def test_seed_file_that_is_not_utf8_says_so(header_model, tmp_path):
    _bad_seed(header_model, tmp_path, '{"instruction": "caf\u00e9", "output": "b"}\n'.encode("latin-1"), "not UTF-8")


def test_missing_seed_file_names_it(header_model, tmp_path):
    from conftest import TINY

    result = _cli("run", str(TINY), f"data.seed={tmp_path / 'nope.jsonl'}", f"model={header_model}",
                  "--out", str(tmp_path / "r"))
    _one_clear_line(result, "nope.jsonl")


def test_wrong_type_in_an_override_names_the_key(tmp_path):
    from conftest import TINY

    _one_clear_line(_cli("run", str(TINY), "rounds=two", "--out", str(tmp_path / "r")), "rounds")


def test_empty_corpus_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_clear_line(_cli("segment", str(tmp_path / "empty"), "-o", str(tmp_path / "s.jsonl")), "no segments")
    assert not (tmp_path / "s.jsonl").exists()


def test_a_file_that_is_not_gguf_is_named(hb_home, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("this is not a model")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"instruction": "a", "output": "b"}\n')
    _one_clear_line(_cli("score", str(pairs), "-o", str(tmp_path / "o.jsonl"), "--model", str(fake)),
                    "not a GGUF file", str(fake))


@pytest.mark.slow  # loads the real model into llama.cpp
def test_a_truncated_gguf_is_named_with_llama_cpps_reason(model_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(model_gguf, "rb") as f:
        cut.write_bytes(f.read(2_000_000))
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"instruction": "a", "output": "b"}\n')
    result = _cli("score", str(pairs), "-o", str(tmp_path / "o.jsonl"), "--model", str(cut), "--mode", "expected")
    _one_clear_line(result, str(cut))
    assert not (tmp_path / "o.jsonl").exists() or (tmp_path / "o.jsonl").read_text() == ""


def test_a_torn_last_line_of_a_pairs_file_is_named(tmp_path):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "outp')
    _one_clear_line(_cli("score", str(pairs), "-o", str(tmp_path / "o.jsonl")), "p.jsonl:2")


def test_a_full_disk_stops_with_one_line_and_leaves_no_half_written_file(tmp_path):
    # RLIMIT_FSIZE makes writes past 20 kB fail the way a full disk does (EFBIG instead of ENOSPC)
    import subprocess
    import sys

    out = tmp_path / "s.jsonl"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)); from humpback_lite.cli import main; "
            f"sys.argv = ['humpback', 'segment', 'pydoc:topics', '-o', {str(out)!r}]; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "error:" in proc.stderr and "File too large" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temp file
    assert _cli("segment", "pydoc:topics", "-o", str(out)).exit_code == 0  # space back: it works


def test_ctrl_c_says_how_to_resume(monkeypatch, tmp_path):
    from conftest import TINY

    from humpback_lite import loop

    def interrupted(recipe, out, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "run", interrupted)
    result = _cli("run", str(TINY), "--out", str(tmp_path / "r"))
    assert result.exit_code == 130 and "rerun the same command to resume" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow  # loads the real model into llama.cpp
def test_an_adapter_made_for_another_base_is_refused_in_one_line(model_gguf, tmp_path):
    # a LoRA whose shapes belong to a wider model: llama.cpp must refuse it, and we must say which file
    import gguf
    import numpy as np

    def lora_for_a_wider_model(writer) -> None:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
        writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 2048), dtype=np.float32))
        writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((2048, 4), dtype=np.float32))

    bad = write_gguf(tmp_path / "other-base.gguf", lora_for_a_wider_model)
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"instruction": "a", "output": "b"}\n')
    result = _cli("score", str(pairs), "-o", str(tmp_path / "o.jsonl"), "--adapter", str(bad))
    _one_clear_line(result, "other-base.gguf")


def test_train_into_a_folder_of_other_files_is_refused_before_training(tmp_path, monkeypatch):
    # `humpback train pairs.jsonl -o ~/models` used to replace ~/models whole
    from humpback_lite import train

    monkeypatch.setattr(train, "prepare_weights", lambda *a: pytest.fail("trained into the user's folder"))
    home = tmp_path / "models"
    home.mkdir()
    (home / "llama-7b.gguf").write_text("the user's model")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"instruction": "a", "output": "b"}\n')
    _one_clear_line(_cli("train", str(pairs), "-o", str(home)), str(home), "llama-7b.gguf")
    assert (home / "llama-7b.gguf").read_text() == "the user's model"


@pytest.mark.parametrize("name", ["../../x", "a/b", ".."])
def test_a_recipe_name_that_is_a_path_is_refused(name):
    from humpback_lite.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="^name: must be a plain folder name"):
        load_recipe(str(ROOT / "recipes" / "quickstart.yaml"), (f"name={name}",))


def test_error_text_with_brackets_is_printed_as_it_is(tmp_path):
    # rich markup in a message once ended in rich.errors.MarkupError (`humpback run '[/]'`), and a
    # path like runs/[exp1] lost its brackets
    result = _cli("run", "[/]")
    _one_clear_line(result, "[/]")
    odd = tmp_path / "[exp1]"
    odd.mkdir()
    (odd / "r.yaml").write_text("name: [unclosed\n")
    _one_clear_line(_cli("run", str(odd / "r.yaml")), str(odd / "r.yaml"))


@pytest.mark.parametrize("args, name", [(["--max-chars", "0"], "max_chars"), (["--max-segments", "0"], "max_segments"),
                                        (["--min-chars", "-5"], "min_chars"), (["--repetition", "2"], "repetition")])
def test_segment_settings_out_of_range_are_refused_before_reading(tmp_path, args, name):
    # --max-chars 0 once split forever; --max-segments 0 wrote an empty file and reported segments
    out = tmp_path / "seg.jsonl"
    _one_clear_line(_cli("segment", "pydoc:topics", "-o", str(out), *args), name)
    assert not out.exists()


def test_a_recipe_that_is_not_utf8_is_named(tmp_path):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("name: caf\xe9\n".encode("latin-1"))
    _one_clear_line(_cli("run", str(recipe)), "latin1.yaml", "not UTF-8")


def test_a_corpus_file_whose_name_is_not_utf8_is_read(tmp_path):
    # its name once raised UnicodeEncodeError in the fingerprint and the provenance
    import os

    folder = tmp_path / "corpus"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.txt")  # Latin-1 bytes: Python holds them as a lone surrogate
    try:
        (folder / name).write_text(("A paragraph of plain text about cafes and coffee. " * 20 + "\n\n") * 3)
    except (UnicodeEncodeError, OSError):
        pytest.skip("this file system refuses such names")
    out = tmp_path / "seg.jsonl"
    result = _cli("segment", str(folder), "-o", str(out), "--min-chars", "100", "--dedup", "none",
                  "--repetition", "0", "--keep-headers")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows and all("caf" in r["provenance"] for r in rows)
    from humpback_lite.loop import input_digest

    assert input_digest(str(folder)) == input_digest(str(folder))


def test_evaluate_limit_zero_is_refused_not_ignored(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text((Path(__file__).parent / "recipes" / "tiny.yaml").read_text())
    _one_clear_line(_cli("evaluate", str(run), "--limit", "0"), "evaluate.limit", "must be >= 1")


def test_status_and_report_on_a_folder_that_is_not_a_run_say_so_and_write_nothing(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for cmd in (["status", str(tmp_path)], ["status", "--json", str(tmp_path)], ["report", str(tmp_path)]):
        _one_clear_line(_cli(*cmd), "is not a run folder")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
