import pytest

from humpback_lite.chat import Chat
from humpback_lite.engine import Engine


@pytest.mark.slow  # loads the real model into llama.cpp
def test_chat_drops_the_oldest_turns_when_the_context_is_full(model_gguf):
    e = Engine(model_gguf, n_ctx=256)
    try:
        chat = Chat(e, max_tokens=16, temperature=0.0)
        for i in range(6):
            assert chat.reply(f"Message {i}: " + "tell me about lists " * 8).strip()
        assert 2 <= len(chat.history) < 12  # trimmed, and always ends with the last exchange
        assert chat.history[-2]["content"].startswith("Message 5")
        assert len(e.tokenize(chat._prompt())) + 16 <= 256
    finally:
        e.close()
