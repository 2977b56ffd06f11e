"""Pieces the backbones share: embeddings of the batch's ids, MLPs, masked pooling, the target's attention over a
history (DIN, GRU4Rec)."""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.data import Batch


def mlp(sizes: list[int], dropout: float = 0.0, last_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n, (size_in, size_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(size_in, size_out))
        if n < len(sizes) - 2 or last_activation:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


RATING_LEVELS = 5  # star ratings 1..5; 0 is padding


def _table(rows: int, dim: int) -> nn.Embedding:
    table = nn.Embedding(rows, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=1e-2)
    with torch.no_grad():
        table.weight[0].zero_()
    return table


class Embeddings(nn.Module):
    """One table for every field's ids (0 = padding, embedded as zeros), and the ratings of the history: the rating
    a user gave is what tells a liked item from a disliked one."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.table = _table(vocab_size, dim)
        self.rating_of_item = _table(RATING_LEVELS + 1, 3 * dim)  # added to a history item's [id, category, brand]
        self.rating_field = _table(RATING_LEVELS + 1, dim)  # averaged over the history: one field
        self.dim = dim

    def fields(self, batch: Batch) -> torch.Tensor:
        return self.table(batch.fields)  # [B, F, d]

    def target_item(self, batch: Batch) -> torch.Tensor:
        """The target's item id, category and brand embeddings, side by side: [B, 3d]."""
        return self.table(batch.fields[:, 1:4]).flatten(1)

    def rating_ids(self, batch: Batch) -> torch.Tensor:
        """[B, K] rating levels 1..5 of the history, 0 at padding."""
        return batch.history_ratings.round().long().clamp(0, RATING_LEVELS) * batch.history_mask

    def history(self, batch: Batch) -> torch.Tensor:
        """The history items' id, category and brand embeddings side by side, plus the rating's: [B, K, 3d]."""
        return self.table(batch.history).flatten(2) + self.rating_of_item(self.rating_ids(batch))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, K, d] averaged over the True positions of [B, K]; zeros for an empty history."""
    weights = mask.unsqueeze(-1).float()
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TargetAttention(nn.Module):
    """Scores each history item against the target with an MLP on [q, k, q - k, q * k]; masked weighted sum."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.score = mlp([4 * dim, hidden, 1])

    def forward(self, target: torch.Tensor, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        query = target.unsqueeze(1).expand_as(history)  # [B, K, e]
        scores = self.score(torch.cat([query, history, query - history, query * history], dim=-1)).squeeze(-1)
        scores = scores.masked_fill(~mask, 0.0)  # [B, K]; DIN keeps raw scores (no softmax) to keep intensity
        return (scores.unsqueeze(-1) * history).sum(1)  # [B, e]
