"""Training rows: what the trainer sees must fit max_length and still end its turn."""

import pytest

from humpback_lite import prompts
from humpback_lite.train import fit_rows


def test_a_long_answer_is_cut_at_a_sentence_end_and_keeps_its_end_of_turn(hf_weights):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_weights)
    answer = " ".join(f"Sentence number {i} explains one more detail of Python lists." for i in range(60))
    row = prompts.forward_row({"instruction": "Explain lists.", "output": answer})
    (fitted,) = fit_rows([row], tok, max_length=128)
    text = tok.apply_chat_template(fitted["prompt"] + fitted["completion"], tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 128
    content = fitted["completion"][0]["content"]
    assert content.endswith("lists.") and answer.startswith(content)
    assert text.rstrip().endswith("<|im_end|>")  # the turn still ends: the model learns to stop
    short = prompts.forward_row({"instruction": "Explain lists.", "output": "Lists hold items."})
    assert fit_rows([short], tok, max_length=128)[0]["completion"] == short["completion"]


def test_training_never_unpickles_weights(hf_weights, tmp_path):
    # a checkpoint that only has a pickle (pytorch_model.bin) is refused, not loaded
    import shutil

    from humpback_lite import train
    from humpback_lite.recipe import TrainConfig

    d = tmp_path / "weights"
    shutil.copytree(hf_weights, d)
    for f in d.glob("*.safetensors"):
        f.unlink()
    (d / "pytorch_model.bin").write_bytes(b"a pickle would run code here")
    with pytest.raises(OSError, match="safetensors"):
        train._load(str(d), TrainConfig(quantize="none"), 0)


def test_a_row_whose_prompt_fills_max_length_is_left_out(hf_weights):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_weights)
    long_prompt = prompts.forward_row({"instruction": "Why? " * 200, "output": "Because."})
    short = prompts.forward_row({"instruction": "Why?", "output": "Because."})
    assert fit_rows([long_prompt, short], tok, max_length=64) == [short]
