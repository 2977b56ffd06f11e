"""DIN (Zhou et al., 2018): attention of the target item over the behaviour history, then an MLP."""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.backbone import Backbone
from r4ec.ranking.data import Batch
from r4ec.ranking.layers import mlp


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


class DIN(Backbone):
    def __init__(self, vocab_size: int, fields: int, hidden: tuple[int, ...] = (128, 64), **kw) -> None:
        super().__init__(vocab_size, fields, **kw)
        item = 3 * self.dim  # item id, category, brand
        self.attention = TargetAttention(item)
        self.dnn = mlp([self.n_fields * self.dim + 2 * item, *hidden, 1], self.dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        target = self.embeddings.target_item(batch)  # [B, 3d]
        history = self.embeddings.history(batch)  # [B, K, 3d]
        interest = self.attention(target, history, batch.history_mask)  # [B, 3d]
        inputs = torch.cat([self.all_fields(batch).flatten(1), target, interest], dim=1)
        return self.dnn(inputs).squeeze(-1)
