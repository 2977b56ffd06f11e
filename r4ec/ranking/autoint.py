"""AutoInt (Song et al., 2019): stacked multi-head self-attention over the field embeddings (knowledge fields
included), with residual connections, then a linear layer over the flattened result."""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.backbone import Backbone
from r4ec.ranking.data import Batch


class AutoInt(Backbone):
    """Args:
    layers: self-attention layers stacked
    heads: attention heads per layer (each of dim / heads)
    **kw: Backbone's (dim, knowledge, connector, dropout)
    """

    def __init__(self, vocab_size: int, fields: int, layers: int = 2, heads: int = 2, **kw) -> None:
        super().__init__(vocab_size, fields, **kw)
        self.attention = nn.ModuleList(
            nn.MultiheadAttention(self.dim, heads, dropout=self.dropout, batch_first=True) for _ in range(layers)
        )
        self.residual = nn.ModuleList(nn.Linear(self.dim, self.dim, bias=False) for _ in range(layers))
        self.out = nn.Linear(self.n_fields * self.dim, 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.all_fields(batch)  # [B, F', d]
        for attention, residual in zip(self.attention, self.residual):
            attended, _ = attention(x, x, x, need_weights=False)
            x = torch.relu(attended + residual(x))
        return self.out(x.flatten(1)).squeeze(-1)
