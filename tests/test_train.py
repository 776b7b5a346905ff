"""Training rows: what the trainer sees must fit max_length and still end its turn."""

import pytest

from humpback_lite import prompts
from humpback_lite.hardware import train_dtype
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


def _rows(n: int) -> list[dict]:
    from humpback_lite.seed import load_seed

    seed, _ = load_seed("builtin:seed", 0, n)
    return [prompts.forward_row(dict(r, source="seed")) for r in seed]


def test_the_loss_head_projects_only_labelled_positions_and_the_loss_is_unchanged(hf_weights, tmp_path, monkeypatch):
    # backward rows: a long answer in the prompt, a short instruction to learn; on a CPU TRL would
    # project every position through the 49k-token head, we only the labelled ones
    import contextlib

    import trl.trainer.utils as trl_utils

    from humpback_lite import train
    from humpback_lite.recipe import TrainConfig
    from humpback_lite.seed import load_seed

    seed, _ = load_seed("builtin:seed", 0, 4)
    rows = [prompts.backward_row(r) for r in seed]
    cfg = TrainConfig(quantize="none", max_steps=1, batch_size=4, max_length=256, lora_r=4)
    projected: list[int] = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        projected.append(hidden.reshape(-1, hidden.shape[-1]).shape[0])
        return apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    original = trl_utils._use_triton
    ours = train.train_lora(rows, tmp_path / "ours", hf_weights, cfg, seed=0)
    monkeypatch.setattr(train, "_labelled_positions_only", contextlib.nullcontext)
    every = train.train_lora(rows, tmp_path / "every", hf_weights, cfg, seed=0)
    assert trl_utils._use_triton is original  # put back after training
    assert len(projected) == 2 and projected[0] < projected[1] / 4, projected  # labels are a few of the tokens
    assert ours.train_loss == pytest.approx(every.train_loss, abs=1e-4)


def test_adapters_read_their_input_in_bf16_and_the_loss_is_unchanged(hf_weights, tmp_path, monkeypatch):
    # PEFT would copy each adapted layer's bf16 input to float32 (the adapters' dtype over a bf16
    # base; over nf4 they are bf16 already), which autocast turns straight back
    import contextlib

    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    from humpback_lite import train
    from humpback_lite.recipe import TrainConfig
    from humpback_lite.seed import load_seed

    seed, _ = load_seed("builtin:seed", 0, 4)
    rows = [prompts.forward_row(dict(r, source="seed")) for r in seed]
    cfg = TrainConfig(quantize="none", max_steps=2, batch_size=2, max_length=128, lora_r=4)
    cast = BaseTunerLayer._cast_input_dtype
    given: list[torch.dtype] = []

    def spy(self, x, dtype):
        out = cast(self, x, dtype)
        if x is not None and self.__class__.__name__ != "Embedding":
            given.append(out.dtype)
        return out

    monkeypatch.setattr(BaseTunerLayer, "_cast_input_dtype", spy)
    ours = train.train_lora(rows, tmp_path / "ours", hf_weights, cfg, seed=0)
    # in bf16 training the input as it is; in float32 training (CPUs without native bf16) the
    # input is float32 already and PEFT's cast stays (over nf4 the adapters are bf16 and need it)
    assert given and set(given) == {getattr(torch, train_dtype(cfg.dtype))}
    given.clear()
    monkeypatch.setattr(train, "_adapter_inputs_as_they_are", lambda model, peft: contextlib.nullcontext())
    copied = train.train_lora(rows, tmp_path / "copied", hf_weights, cfg, seed=0)
    assert torch.float32 in set(given)  # what PEFT does by itself
    assert ours.train_loss == pytest.approx(copied.train_loss, abs=1e-4)


def test_the_heap_is_trimmed_after_every_micro_batch(hf_weights, tmp_path, monkeypatch):
    # glibc keeps the freed activations of each micro-batch; handing them back keeps the peak
    # resident size down (docs/hardware.md: 4.24 -> 3.78 GiB on the quickstart's round 1)
    from humpback_lite import train
    from humpback_lite.recipe import TrainConfig
    from humpback_lite.seed import load_seed

    seed, _ = load_seed("builtin:seed", 0, 4)
    rows = [prompts.forward_row(dict(r, source="seed")) for r in seed]
    trims: list[int] = []
    monkeypatch.setattr(train, "_trim_heap", lambda: trims.append(1))
    cfg = TrainConfig(quantize="none", max_steps=2, batch_size=1, grad_accum=2, max_length=128, lora_r=4)
    stats = train.train_lora(rows, tmp_path / "a", hf_weights, cfg, seed=0)
    assert stats.steps == 2
    assert len(trims) == 2 * 2 + 1  # each of the 4 micro-batches, then once after training


def test_batches_group_rows_of_similar_length(hf_weights, tmp_path, monkeypatch):
    # short and long rows in turn: random batches mix them (padding), grouped ones do not
    from trl import SFTTrainer

    from humpback_lite.recipe import TrainConfig
    from humpback_lite.train import train_lora

    long = " ".join(f"Step {i} of the answer adds one more detail about lists." for i in range(12))
    rows = [prompts.forward_row({"instruction": f"Question {i}?", "output": long if i % 2 else "Yes."})
            for i in range(8)]
    padding: dict[bool, list[float]] = {True: [], False: []}
    step = SFTTrainer.training_step
    for grouped in (True, False):
        def spy(self, model, inputs, *a, grouped=grouped, **k):
            mask = inputs["attention_mask"]
            padding[grouped].append(mask.numel() / float(mask.sum()))
            return step(self, model, inputs, *a, **k)

        monkeypatch.setattr(SFTTrainer, "training_step", spy)
        cfg = TrainConfig(quantize="none", max_steps=4, batch_size=2, max_length=256, lora_r=4, group_by_length=grouped)
        train_lora(rows, tmp_path / str(grouped), hf_weights, cfg, seed=0)
    assert len(padding[True]) == 4 and max(padding[True]) < 1.05, padding  # two short or two long rows
    assert max(padding[False]) > 1.5, padding  # a short row padded to a long one


def test_two_ddp_processes_train_the_same_steps_to_nearly_the_same_loss(hf_weights, tmp_path):
    # torchrun + gloo on the CPU: the same code path that spreads a training over several GPUs
    from humpback_lite.recipe import TrainConfig
    from humpback_lite.train import train_lora

    rows = _rows(8)
    steps: list[tuple[int, int]] = []
    one = train_lora(rows, tmp_path / "one", hf_weights,
                     TrainConfig(quantize="none", max_steps=3, batch_size=2, max_length=128, lora_r=4), seed=0)
    two = train_lora(rows, tmp_path / "two", hf_weights,
                     TrainConfig(quantize="none", max_steps=3, batch_size=2, max_length=128, lora_r=4, processes=2),
                     seed=0, progress=lambda step, total: steps.append((step, total)))
    assert (tmp_path / "two" / "adapter_model.safetensors").exists()
    assert two.extra["processes"] == 2 and one.extra["processes"] == 1
    assert two.steps == one.steps == 3 and steps == [(1, 3), (2, 3), (3, 3)]
    assert two.first_loss is not None and one.first_loss is not None
    # each step sees as many rows; which rows differs (the distributed sampler shuffles its own way)
    assert abs(two.train_loss - one.train_loss) < 0.05, (one, two)  # measured: 2.4069 vs 2.4062


def test_an_error_in_a_training_process_is_reported_with_its_message(tmp_path):
    from humpback_lite.recipe import TrainConfig
    from humpback_lite.train import TrainError, train_lora

    cfg = TrainConfig(quantize="none", max_steps=1, batch_size=2, processes=2)
    with pytest.raises(TrainError, match=r"training in 2 processes failed: .*no-such-weights"):
        train_lora(_rows(2), tmp_path / "out", str(tmp_path / "no-such-weights"), cfg)
    assert not (tmp_path / "out").exists()


def test_unsloth_is_refused_for_several_processes():
    from humpback_lite.recipe import TrainConfig
    from humpback_lite.train import TrainError, use_unsloth

    with pytest.raises(TrainError, match="train.processes=1"):
        use_unsloth(TrainConfig(backend="unsloth", processes=2))
    assert use_unsloth(TrainConfig(processes=2)) is False
