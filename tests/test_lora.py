"""LoRA tuning on the one-layer Llama with SmolLM2's real tokenizer and chat template: the reply's tokens carry the
loss and the prompt's do not, a few epochs lower the loss, the adapter reloads in the knowledge backend and changes
what it generates, and a killed run resumes from its checkpoint."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from r4ec.knowledge import prompts
from r4ec.knowledge.backends import Request, TransformersBackend
from r4ec.tuning.lora import IGNORE, Recipe, TuningError, encode, read_examples, recipe, train_adapter

HISTORY = [{"item_id": "1", "title": "Toy Story", "release_year": 1995, "category": "Animation", "brand": None, "rating": 5.0}]


def chat(n: int) -> list[dict[str, str]]:
    inputs = {"user_id": str(n), "age": 20 + n, "gender": "F", "occupation": "writer", "history": HISTORY}
    reply = {"role": "assistant", "content": f"<preference>likes animation, rated Toy Story 5 ({n})</preference>"}
    return prompts.reason_chat("user", "movies", inputs) + [reply]


FAST = Recipe(learning_rate=3e-2, epochs=3, batch_size=4, valid_fraction=0.2, rank=4, alpha=8)


def test_only_the_reply_carries_the_loss(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids, labels = encode(tokenizer, chat(1), 4096)
    answered = [i for i, label in enumerate(labels) if label != IGNORE]
    assert answered == list(range(answered[0], len(ids)))  # one labelled run, at the end
    reply = tokenizer.decode(ids[answered[0] :])
    assert reply.startswith("<preference>likes animation") and reply.rstrip().endswith("<|im_end|>")
    assert "Toy Story" in tokenizer.decode(ids[: answered[0]])  # the prompt is there, unlabelled
    short_ids, short_labels = encode(tokenizer, chat(1), len(ids) - 10)
    assert short_labels[-len(answered) :] == labels[-len(answered) :] and len(short_ids) == len(ids) - 10  # cut the prompt


def test_training_lowers_the_loss_and_the_adapter_changes_generation(tiny_model, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("r4ec.tuning.lora.PROGRESS_INTERVAL_S", 0.0)  # a progress line after every step
    caplog.set_level(logging.INFO, logger="r4ec")
    chats = [chat(n) for n in range(10)]
    result = train_adapter(tiny_model, "tiny", chats, {"reason.jsonl": "x"}, tmp_path / "actor", FAST)
    losses = [e["train_loss"] for e in result.epochs]
    assert len(losses) == 3 and losses[-1] < losses[0]
    progress = [r.getMessage() for r in caplog.records if "tokens/s, ETA" in r.getMessage()]
    assert progress[0].startswith("epoch 1/3: step 1/2") and progress[-1].startswith("epoch 3/3: step 2/2")
    assert progress[-1].endswith("ETA 0s")
    record = json.loads((tmp_path / "actor" / "training.json").read_text())
    assert record["data"] == {"reason.jsonl": "x"} and record["recipe"]["rank"] == 4 and record["valid"] == 2

    base = TransformersBackend(str(tiny_model), dtype="float32")
    tuned = TransformersBackend(str(tiny_model), dtype="float32", adapters={"actor": result.out_dir})
    prompt = base.tokenizer(base._prompt(Request.chat(chat(99)[:-1]), ""), return_tensors="pt").input_ids
    reply = base.tokenizer("<preference>likes animation", add_special_tokens=False, return_tensors="pt").input_ids
    ids = torch.cat([prompt, reply], dim=1)

    def reply_loss(model) -> float:
        """Mean negative log-likelihood of a reply like the training replies, after the prompt."""
        with torch.no_grad():
            logits = model(ids).logits[0, prompt.shape[1] - 1 : -1]
        return torch.nn.functional.cross_entropy(logits, reply[0]).item()

    assert reply_loss(tuned.model) < reply_loss(base.model) - 0.1  # the adapter is loaded and does what it learnt
    assert tuned.model_id != base.model_id


def test_micro_batches_take_the_same_step_as_the_whole_batch(tiny_model, tmp_path):
    """Gradients accumulated over micro-batches of 1 (each padded to its own length) make the same adapter as the
    batch of 4 at once: only the memory differs."""
    chats = [chat(n) if n % 2 else chat(n)[:1] + [chat(n)[1], {**chat(n)[2], "content": "<preference>short</preference>"}]
             for n in range(10)]  # fmt: skip
    one = Recipe(**{**FAST.__dict__, "epochs": 1, "dropout": 0.0})  # no dropout: the same step, not the same noise
    whole = train_adapter(tiny_model, "tiny", chats, {"reason.jsonl": "x"}, tmp_path / "whole", one)
    micro = train_adapter(tiny_model, "tiny", chats, {"reason.jsonl": "x"}, tmp_path / "micro",
                          Recipe(**{**one.__dict__, "micro_batch_size": 1}))  # fmt: skip
    assert micro.epochs[0]["train_loss"] == pytest.approx(whole.epochs[0]["train_loss"], rel=1e-5)
    assert micro.epochs[0]["valid_loss"] == pytest.approx(whole.epochs[0]["valid_loss"], rel=1e-5)
    from safetensors.torch import load_file

    a, b = (load_file(r.out_dir / "adapter_model.safetensors") for r in (whole, micro))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3 * max(a[k].abs().max().item() for k in a)


def test_a_killed_run_resumes_from_its_checkpoint(tiny_model, tmp_path, monkeypatch):
    chats = [chat(n) for n in range(10)]
    calls = {"n": 0}
    original = torch.optim.AdamW.step

    def dies_in_epoch_two(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # 8 training examples in batches of 4: two steps an epoch
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_adapter(tiny_model, "tiny", chats, {"reason.jsonl": "x"}, tmp_path / "actor", FAST)
    monkeypatch.setattr(torch.optim.AdamW, "step", original)
    resumed = train_adapter(tiny_model, "tiny", chats, {"reason.jsonl": "x"}, tmp_path / "actor", FAST)
    fresh = train_adapter(tiny_model, "tiny", chats, {"reason.jsonl": "x"}, tmp_path / "fresh", FAST)
    assert [e["epoch"] for e in resumed.epochs] == [1, 2, 3]
    assert resumed.epochs[0] == fresh.epochs[0]  # epoch 1 came from the checkpoint, not trained again
    with pytest.raises(TuningError, match="another run"):
        train_adapter(tiny_model, "tiny", chats, {"reason.jsonl": "other data"}, tmp_path / "actor", FAST)


def test_a_finished_run_is_not_trained_again(tiny_model, tmp_path, monkeypatch):
    chats = [chat(n) for n in range(10)]
    first = train_adapter(tiny_model, "tiny", chats, {"reason.jsonl": "x"}, tmp_path / "actor", FAST)
    record = (tmp_path / "actor" / "training.json").read_text()

    def no_step(self, *args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(torch.optim.AdamW, "step", no_step)
    again = train_adapter(tiny_model, "tiny", chats, {"reason.jsonl": "x"}, tmp_path / "actor", FAST)
    assert (again.epochs, again.seconds) == (first.epochs, first.seconds)
    assert (tmp_path / "actor" / "training.json").read_text() == record  # the time the training took, kept
    with pytest.raises(TuningError, match="another run"):  # another recipe is not this run's result
        train_adapter(tiny_model, "tiny", chats, {"reason.jsonl": "x"}, tmp_path / "actor", Recipe(**{**FAST.__dict__, "epochs": 4}))


def test_profiles_and_missing_data_are_one_line(tmp_path):
    assert recipe("paper") == Recipe() and recipe("cpu", epochs=1).epochs == 1
    assert recipe("cpu").learning_rate == 2e-4
    with pytest.raises(TuningError, match="no LoRA profile 'gpu'"):
        recipe("gpu")
    with pytest.raises(TuningError, match="reason.jsonl, .*refine.jsonl not found"):
        read_examples(tmp_path, "actor")
