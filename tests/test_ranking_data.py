import numpy as np
import pyarrow as pa
import pytest
import torch

from r4ec.ranking import RankingError
from r4ec.ranking.data import FIELDS, Vocab, to_tensors


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def row(user, item, category, history, label=1, split="train", vector=None):
    return {"user_id": user, "item_id": item, "category": category, "brand": "", "age": 30, "gender": "F",
            "occupation": "writer", "history_item_ids": [h for h, _ in history],
            "history_categories": [c for _, c in history], "history_brands": [""] * len(history),
            "history_ratings": [4.0] * len(history), "label": label, "split": split,
            "user_knowledge_vector": vector, "item_knowledge_vector": [0.5, 0.5]}  # fmt: skip


TRAIN = table([row("u1", "i1", "Drama", [("i2", "Comedy"), ("i3", "Drama")], vector=[1.0, 2.0]),
               row("u2", "i2", "Comedy", [("i1", "Drama")], label=0, vector=None)])  # fmt: skip


def test_one_id_space_with_padding_unknowns_and_shared_item_ids():
    vocab = Vocab.fit(TRAIN)
    items = vocab.encode("item_id", pa.chunked_array([["i1", "i3", "never-seen", None]]))
    history_items = vocab.encode("item_id", pa.chunked_array([["i1"]]))
    assert items[0] == history_items[0]  # a target item and the same item in a history share an id
    assert items[3] == 0  # missing is padding
    assert items[2] not in (0, items[0], items[1])  # unseen: the field's unknown id
    all_ids = [i for f in FIELDS for i in vocab.encode(f, TRAIN.column(f))]
    assert max(all_ids) < vocab.size
    assert len(set(vocab.encode("user_id", TRAIN.column("user_id"))) & set(vocab.encode("item_id", TRAIN.column("item_id")))) == 0


def test_tensors_keep_history_order_mask_and_missing_knowledge():
    vocab = Vocab.fit(TRAIN)
    tensors = to_tensors(TRAIN, vocab, history_length=3, knowledge=("user_knowledge_vector", "item_knowledge_vector"))
    assert tensors.fields.shape == (2, len(FIELDS)) and tensors.history.shape == (2, 3, 3)
    assert tensors.history_mask.tolist() == [[True, True, False], [True, False, False]]
    first_history = tensors.history[0, :2, 0].tolist()
    assert first_history == vocab.encode("item_id", pa.chunked_array([["i2", "i3"]])).tolist()  # oldest first
    assert tensors.history[0, 2].tolist() == [0, 0, 0]  # padding
    assert torch.equal(tensors.knowledge[0, 0], torch.tensor([1.0, 2.0]))
    assert torch.equal(tensors.knowledge[1, 0], torch.zeros(2))  # a missing vector is zeros
    batch = tensors.batch(torch.tensor([1]))
    assert batch.label.tolist() == [0.0] and batch.knowledge.shape == (1, 2, 2)


def test_a_history_longer_than_k_is_an_error_not_a_cut():
    """Histories come from marts built with some K; a model with a smaller K must not see less without a word."""
    long = table([row("u1", "i1", "Drama", [(f"i{n}", "Drama") for n in range(2, 7)])])
    vocab = Vocab.fit(long)
    with pytest.raises(RankingError, match="1 samples have histories of up to 5 items, longer than history_length 2"):
        to_tensors(long, vocab, history_length=2)
    tensors = to_tensors(long, vocab, history_length=5)
    assert tensors.history[0, :, 0].tolist() == vocab.encode("item_id", pa.chunked_array([[f"i{n}" for n in range(2, 7)]])).tolist()
    assert np.all(tensors.history_mask.numpy()) and tensors.knowledge is None


def test_missing_values_are_padding_not_values():
    """Books may lack a brand or a category, and no Amazon user has demographics (null; NaN once pandas had them)."""
    rows = [{**row("u1", "i1", None, [("i2", None)]), "brand": None, "age": None, "gender": None},
            {**row("u2", "i2", "Drama", [("i1", "Drama")]), "age": float("nan")}]  # fmt: skip
    books = table(rows)
    vocab = Vocab.fit(books)
    assert None not in vocab.values["category"] and "nan" not in vocab.values["age"] and vocab.values["age"] == {}
    tensors = to_tensors(books, vocab, history_length=2)
    category, brand, age = (FIELDS.index(name) for name in ("category", "brand", "age"))
    assert tensors.fields[0, [category, brand, age]].tolist() == [0, 0, 0]
    assert tensors.fields[1, age] == 0 and tensors.fields[1, category] != 0
    assert tensors.history[0, 0].tolist()[1:] == [0, 0]  # the history item's missing category and brand


def test_a_split_without_knowledge_keeps_the_width_and_no_knowledge_at_all_is_an_error():
    """A sampled knowledge run may reach no valid sample: that split's vectors are zeros of the same width."""
    rows = table([*TRAIN.to_pylist(), row("u3", "i1", "Drama", [("i2", "Comedy")], split="valid", vector=None)])
    vocab = Vocab.fit(TRAIN)
    tensors = to_tensors(rows, vocab, history_length=3, knowledge=("user_knowledge_vector",))
    valid = tensors.subset(torch.tensor([2]))
    assert len(valid) == 1 and valid.knowledge.shape == (1, 1, 2) and not valid.knowledge.any()
    nothing = rows.set_column(rows.schema.get_field_index("user_knowledge_vector"), "user_knowledge_vector",
                              pa.nulls(3, pa.list_(pa.float32())))  # fmt: skip
    with pytest.raises(RankingError, match="no sample of the training set has a user_knowledge_vector"):
        to_tensors(nothing, vocab, history_length=3, knowledge=("user_knowledge_vector",))
