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
