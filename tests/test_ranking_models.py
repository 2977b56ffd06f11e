"""Backbones on the batch contract: shapes, history masking, knowledge fields."""

from __future__ import annotations

import pytest
import torch

from r4ec.ranking.autoint import AutoInt
from r4ec.ranking.data import FIELDS, Batch
from r4ec.ranking.dcn import DCN
from r4ec.ranking.deepfm import DeepFM
from r4ec.ranking.dien import DIEN
from r4ec.ranking.din import DIN
from r4ec.ranking.fignn import FiGNN
from r4ec.ranking.gru4rec import GRU4Rec
from r4ec.ranking.logistic import LogisticRegression

VOCAB, B, K, D = 60, 5, 4, 8


def batch(knowledge: bool = True, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    history = torch.randint(1, VOCAB, (B, K, 3), generator=g) * mask.unsqueeze(-1)  # padding is id 0
    return Batch(
        fields=torch.randint(1, VOCAB, (B, len(FIELDS)), generator=g), history=history,
        history_ratings=torch.randint(1, 6, (B, K), generator=g).float() * mask, history_mask=mask,
        knowledge=torch.randn(B, 2, D, generator=g) if knowledge else None, label=torch.ones(B),
    )  # fmt: skip


MODELS = [DIN, DIEN, GRU4Rec, AutoInt, FiGNN, DCN, DeepFM]


@pytest.mark.parametrize("model_class", MODELS)
@pytest.mark.parametrize("connector", ["mlp", "experts"])
def test_logits_per_sample_with_and_without_knowledge(model_class, connector):
    torch.manual_seed(0)
    with_knowledge = model_class(VOCAB, len(FIELDS), knowledge_types=2, knowledge_dim=D, connector=connector).eval()
    assert with_knowledge(batch()).shape == (B,)
    base = model_class(VOCAB, len(FIELDS)).eval()
    assert base(batch(knowledge=False)).shape == (B,)
    changed = batch()
    changed.knowledge = changed.knowledge + 1.0
    assert not torch.allclose(with_knowledge(batch()), with_knowledge(changed))  # knowledge reaches the logit


@pytest.mark.parametrize("model_class", MODELS)
def test_padded_history_positions_do_not_matter(model_class):
    torch.manual_seed(0)
    model = model_class(VOCAB, len(FIELDS)).eval()
    original = batch(knowledge=False)
    noisy = batch(knowledge=False)
    noisy.history = torch.where(noisy.history_mask.unsqueeze(-1), noisy.history, torch.randint(1, VOCAB, noisy.history.shape))
    noisy.history_ratings = torch.where(noisy.history_mask, noisy.history_ratings, torch.randint(1, 6, (B, K)).float())
    assert torch.allclose(model(original), model(noisy), atol=1e-6)
    real = batch(knowledge=False)
    real.history[0, 0, 0] = 1 if real.history[0, 0, 0] != 1 else 2  # another item at a real position
    assert not torch.allclose(model(original)[0], model(real)[0])  # a real position does matter
    rated = batch(knowledge=False)
    rated.history_ratings[0, 0] = 1.0 if rated.history_ratings[0, 0] != 1 else 5.0  # another rating of a real item
    assert not torch.allclose(model(original)[0], model(rated)[0])


def test_logistic_regression_is_a_sum_of_field_weights():
    model = LogisticRegression(VOCAB)
    with torch.no_grad():
        model.weights.weight.copy_(torch.arange(VOCAB, dtype=torch.float).unsqueeze(1))
        model.bias.fill_(0.5)
    b = batch(knowledge=False)
    assert torch.allclose(model(b), b.fields.float().sum(1) + 0.5)


@pytest.mark.parametrize("model_class", MODELS)
def test_missing_knowledge_is_a_learned_state_not_a_zero_vector(model_class):
    """Defect: a missing vector was zeros with no indicator, so "no knowledge" looked like a real (odd) vector."""
    torch.manual_seed(0)
    model = model_class(VOCAB, len(FIELDS), knowledge_types=2, knowledge_dim=D).eval()
    with torch.no_grad():
        model.missing_knowledge.normal_()  # as after training
    present = torch.tensor([[True, True], [True, False], [False, True], [False, False], [True, True]])
    masked = batch()
    masked.knowledge_mask = present
    other = batch()
    other.knowledge_mask = present
    other.knowledge = other.knowledge + 5.0 * (~present).unsqueeze(-1)  # only where the vector is missing
    assert torch.allclose(model(masked), model(other), atol=1e-6)  # a missing vector's values never reach the logit
    all_there = batch()
    all_there.knowledge_mask = torch.ones(B, 2, dtype=torch.bool)
    differs = ~torch.isclose(model(masked), model(all_there), atol=1e-6)
    assert differs.tolist() == (~present.all(dim=1)).tolist()  # and the missing state changes exactly those rows
