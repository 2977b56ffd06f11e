"""Logistic regression on the one-hot categorical fields: the floor every backbone must beat."""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.data import Batch


class LogisticRegression(nn.Module):
    def __init__(self, vocab_size: int, **_: object) -> None:
        super().__init__()
        self.weights = nn.Embedding(vocab_size, 1, padding_idx=0)
        nn.init.zeros_(self.weights.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.weights(batch.fields).sum(dim=(1, 2)) + self.bias  # [B] logits
