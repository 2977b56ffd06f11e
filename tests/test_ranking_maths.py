"""The backbones compute what their papers say: each term recomputed by hand from the modules' own parameters.

Models run in float64 with embeddings scaled up from their 1e-2 initialisation, so that every term is large enough
for a wrong sign or a missing factor to show, and tolerances can be tight.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from r4ec.ranking.data import FIELDS, Batch
from r4ec.ranking.dcn import DCN
from r4ec.ranking.deepfm import DeepFM, pairwise_interactions
from r4ec.ranking.dien import AUGRUCell
from r4ec.ranking.din import DIN
from r4ec.ranking.train import TrainConfig, train
from tests.sample_files import flip_test_labels

VOCAB, B, K, D = 60, 5, 4, 8
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)


def batch(seed: int = 0) -> Batch:
    """Knowledge for two types; padded history positions hold real item ids and ratings, so that only the mask
    keeps them out (with id 0 they would embed as zeros and weigh nothing whatever the model did)."""
    g = torch.Generator().manual_seed(seed)
    return Batch(
        fields=torch.randint(1, VOCAB, (B, len(FIELDS)), generator=g), history=torch.randint(1, VOCAB, (B, K, 3), generator=g),
        history_ratings=torch.randint(1, 6, (B, K), generator=g).double(), history_mask=MASK,
        knowledge=torch.randn(B, 2, D, generator=g, dtype=torch.float64), label=torch.ones(B, dtype=torch.float64),
    )  # fmt: skip


def prepared(model: torch.nn.Module) -> torch.nn.Module:
    """float64, eval mode (no dropout), embeddings of unit scale (the padding rows stay zero)."""
    model = model.double().eval()
    with torch.no_grad():
        for table in (model.embeddings.table, model.embeddings.rating_of_item, model.embeddings.rating_field):
            table.weight.mul_(100.0)
    return model


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_deepfm_second_order_term_is_the_sum_over_field_pairs():
    torch.manual_seed(0)
    model = prepared(DeepFM(VOCAB, len(FIELDS), knowledge_types=2, knowledge_dim=D))
    with torch.no_grad():
        model.first_order.weight[1:].normal_()  # zeros at initialisation: make the linear term count too
    b = batch()
    fields = model.all_fields(b)  # [B, F', d]: 7 categorical, 2 history, 2 knowledge fields
    n = fields.shape[1]
    brute = torch.stack([sum(row[i] @ row[j] for i in range(n) for j in range(i + 1, n)) for row in fields])
    assert close(pairwise_interactions(fields), brute)
    linear = torch.stack([model.first_order.weight[ids].sum() for ids in b.fields])
    deep = model.dnn(fields.flatten(1)).squeeze(-1)
    with torch.no_grad():
        assert close(model(b), linear + brute + deep)
    assert brute.abs().min() > 1e-3  # the term is not negligible next to the tolerance


@pytest.mark.parametrize("crosses", [1, 3])
def test_dcn_cross_layers_follow_x_next_equals_x0_times_x_dot_w_plus_b_plus_x(crosses):
    """DCN's vector cross layer: x_{l+1} = x0 * (x_l . w_l) + b_l + x_l, a scalar per sample scaling x0."""
    torch.manual_seed(0)
    model = prepared(DCN(VOCAB, len(FIELDS), crosses=crosses, knowledge_types=2, knowledge_dim=D))
    with torch.no_grad():
        for weight, bias in zip(model.cross_weights, model.cross_biases):
            weight.normal_(std=0.3)
            bias.normal_(std=0.5)  # zeros at initialisation
    b = batch()
    x0 = model.all_fields(b).flatten(1)
    crossed = []
    for row in x0:  # one sample at a time, the formula as written
        x = row
        for weight, bias in zip(model.cross_weights, model.cross_biases):
            x = row * torch.dot(x, weight) + bias + x
        crossed.append(x)
    expected = model.out(torch.cat([torch.stack(crossed), model.dnn(x0)], dim=1)).squeeze(-1)
    without_crosses = model.out(torch.cat([x0 + sum(model.cross_biases), model.dnn(x0)], dim=1)).squeeze(-1)
    with torch.no_grad():
        assert close(model(b), expected)
        assert (expected - without_crosses).abs().min() > 1e-3  # the crosses move the logit


def test_augru_keeps_its_state_where_attention_is_zero_and_is_a_gru_where_it_is_one():
    torch.manual_seed(0)
    size = 6
    cell = AUGRUCell(size).double()
    x, h = torch.randn(4, size, dtype=torch.float64), torch.randn(4, size, dtype=torch.float64)
    attention = torch.tensor([0.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    with torch.no_grad():
        new = cell(x, h, attention)
        gates = torch.sigmoid(torch.cat([x, h], -1) @ cell.gates.weight.T + cell.gates.bias)
        reset, update = gates[:, :size], gates[:, size:]
        candidate = torch.tanh(torch.cat([x, reset * h], -1) @ cell.candidate.weight.T + cell.candidate.bias)
    assert torch.equal(new[attention == 0], h[attention == 0])  # h_t = h_{t-1}, exactly
    gru = (1 - update) * h + update * candidate  # attention 1: a plain GRU step
    assert close(new[1], gru[1]) and (new[1] - h[1]).abs().max() > 0.05
    half = (1 - 0.5 * update) * h + 0.5 * update * candidate  # the update gate scaled by the attention
    assert close(new[2], half[2])


def test_din_attention_is_the_scored_sum_over_real_positions_only():
    torch.manual_seed(0)
    model = prepared(DIN(VOCAB, len(FIELDS), knowledge_types=2, knowledge_dim=D))
    b = batch()
    target, history = model.embeddings.target_item(b), model.embeddings.history(b)
    assert history[~b.history_mask].abs().sum(-1).min() > 0  # padding rows are not zero vectors here
    with torch.no_grad():
        by_hand = []
        for q, items, mask in zip(target, history, b.history_mask):
            total = torch.zeros_like(q)
            for k in mask.nonzero().flatten().tolist():  # real positions only
                h = items[k]
                total = total + model.attention.score(torch.cat([q, h, q - h, q * h])).squeeze() * h
            by_hand.append(total)
        interest = torch.stack(by_hand)
        assert close(model.attention(target, history, b.history_mask), interest)
        assert close(model(b), model.dnn(torch.cat([model.all_fields(b).flatten(1), target, interest], 1)).squeeze(-1))

        other = batch(seed=1)  # other ids and ratings everywhere; keep this batch's real positions
        padded = batch()
        padded.history = torch.where(MASK.unsqueeze(-1), b.history, other.history)
        padded.history_ratings = torch.where(MASK, b.history_ratings, other.history_ratings)
        assert not torch.equal(padded.history[~MASK], b.history[~MASK])
        assert close(model(padded), model(b))
        real = batch()
        real.history[0, 0] = other.history[0, 0]
        assert not close(model(real)[0], model(b)[0])  # a real position does count


def synthetic_table(rows: int = 1500, seed: int = 0) -> pa.Table:
    """A training set shaped as Feast returns it, knowledge vectors included: users and items have hidden tastes
    in R^4, a click is likelier when they agree, and the knowledge vectors are noisy views of those tastes."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 50, 80
    taste, traits = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    user, item = rng.integers(n_users, size=rows), rng.integers(n_items, size=rows)
    label = (rng.random(rows) < 1 / (1 + np.exp(-2.0 * (taste[user] * traits[item]).sum(1)))).astype(np.int64)
    category = [f"c{i % 6}" for i in range(n_items)]
    brand = [None if i % 3 == 0 else f"b{i % 4}" for i in range(n_items)]
    histories = [rng.integers(n_items, size=rng.integers(0, 8)) for _ in range(rows)]
    knowledge = rng.normal(size=(rows, 2, D)) * 0.5
    knowledge[:, 0, :4] += taste[user]
    knowledge[:, 1, :4] += traits[item]

    def vectors(n: int) -> list:
        return [None if r % 17 == 0 else knowledge[r, n].tolist() for r in range(rows)]  # a few without knowledge

    return pa.table({
        "sample_id": [f"s{r}" for r in range(rows)], "user_id": [f"u{u}" for u in user], "item_id": [f"i{i}" for i in item],
        "category": [category[i] for i in item], "brand": pa.array([brand[i] for i in item], pa.string()),
        "age": (18 + user % 40).tolist(), "gender": ["MF"[u % 2] for u in user], "occupation": [f"o{u % 5}" for u in user],
        "event_timestamp": pa.array(np.arange(rows) * 1_000_000, pa.timestamp("us", tz="UTC")),
        "history_item_ids": [[f"i{i}" for i in h] for h in histories],
        "history_categories": [[category[i] for i in h] for h in histories],
        "history_brands": pa.array([[brand[i] for i in h] for h in histories], pa.list_(pa.string())),
        "history_ratings": [rng.integers(1, 6, size=len(h)).astype(float).tolist() for h in histories],
        "user_knowledge_vector": pa.array(vectors(0), pa.list_(pa.float32())),
        "item_knowledge_vector": pa.array(vectors(1), pa.list_(pa.float32())),
        "label": label, "split": rng.choice(["train", "valid", "test"], size=rows, p=[0.7, 0.15, 0.15]),
    })  # fmt: skip


@pytest.mark.parametrize("backbone", ["din", "deepfm"])
def test_epoch_choice_with_dropout_and_knowledge_never_reads_the_test_split(backbone):
    """Flip every test label: the chosen epoch, every validation figure and the training curve must not move; the
    test AUC must become 1 - AUC. With dropout on, this also shows the test split draws no random numbers."""
    table = synthetic_table()
    config = TrainConfig(
        backbone=backbone, knowledge="single", epochs=4, patience=4, batch_size=128, seed=3, history_length=8
    )
    model, clean = train(table, config)
    _, corrupted = train(flip_test_labels(table), config)
    assert model.dropout > 0 and model.connector is not None  # the case the LR test cannot cover
    assert len({round(epoch["valid_auc"], 6) for epoch in clean.history}) > 1  # epochs differ: the choice matters
    assert clean.best_epoch == corrupted.best_epoch
    assert clean.valid == corrupted.valid and clean.history == corrupted.history
    assert clean.test["auc"] == pytest.approx(1 - corrupted.test["auc"], abs=1e-12)
    assert clean.test["auc"] > 0.6  # it learned something, so 1 - AUC is far from it
