"""Bad input gets one clear error naming what to change, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from fakes import FakeEngine

from humpback_lite.chat import Chat
from humpback_lite.cli import main
from humpback_lite.models import ContextError


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


def _bad_seed(tmp_path, text: bytes, *needles: str) -> None:
    from conftest import TINY

    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(text)
    _one_clear_line(_cli("run", str(TINY), f"data.seed={seed}", "--out", str(tmp_path / "r")), *needles)


def test_seed_file_with_a_malformed_line_names_file_and_line(model_gguf, tmp_path):
    _bad_seed(tmp_path, b'{"instruction": "a", "output": "b"}\n{"instruction": "c", \n', "seed.jsonl:2", "not valid JSON")


def test_seed_file_with_a_missing_field_names_the_line_and_field(model_gguf, tmp_path):
    _bad_seed(tmp_path, b'{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', "seed.jsonl:2", "output")


def test_seed_file_that_is_not_utf8_says_so(model_gguf, tmp_path):
    _bad_seed(tmp_path, '{"instruction": "caf\u00e9", "output": "b"}\n'.encode("latin-1"), "not UTF-8")


def test_missing_seed_file_names_it(model_gguf, tmp_path):
    from conftest import TINY

    result = _cli("run", str(TINY), f"data.seed={tmp_path / 'nope.jsonl'}", "--out", str(tmp_path / "r"))
    _one_clear_line(result, "nope.jsonl")


def test_wrong_type_in_an_override_names_the_key(tmp_path):
    from conftest import TINY

    _one_clear_line(_cli("run", str(TINY), "rounds=two", "--out", str(tmp_path / "r")), "rounds")


def test_empty_corpus_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_clear_line(_cli("segment", str(tmp_path / "empty"), "-o", str(tmp_path / "s.jsonl")), "no segments")
    assert not (tmp_path / "s.jsonl").exists()


def test_a_file_that_is_not_gguf_is_named(model_gguf, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("this is not a model")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"instruction": "a", "output": "b"}\n')
    _one_clear_line(_cli("score", str(pairs), "-o", str(tmp_path / "o.jsonl"), "--model", str(fake)),
                    "not a GGUF file", str(fake))


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

    def interrupted(recipe, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "run", interrupted)
    result = _cli("run", str(TINY), "--out", str(tmp_path / "r"))
    assert result.exit_code == 130 and "rerun the same command to resume" in result.output
    assert "Traceback" not in result.output


def test_an_adapter_made_for_another_base_is_refused_in_one_line(model_gguf, tmp_path):
    # a LoRA whose shapes belong to a wider model: llama.cpp must refuse it, and we must say which file
    import gguf
    import numpy as np

    bad = tmp_path / "other-base.gguf"
    writer = gguf.GGUFWriter(str(bad), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 2048), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((2048, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"instruction": "a", "output": "b"}\n')
    result = _cli("score", str(pairs), "-o", str(tmp_path / "o.jsonl"), "--adapter", str(bad))
    _one_clear_line(result, "other-base.gguf")
