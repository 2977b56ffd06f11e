"""DCN (Wang et al., 2017): a cross network (explicit feature crosses of bounded degree) beside a DNN."""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.backbone import Backbone
from r4ec.ranking.data import Batch
from r4ec.ranking.layers import mlp


class DCN(Backbone):
    """Args:
    crosses: cross layers (the highest degree of a crossed feature is crosses + 1)
    hidden: the widths of the DNN's hidden layers
    **kw: Backbone's (dim, knowledge, connector, dropout)
    """

    def __init__(self, vocab_size: int, fields: int, crosses: int = 3, hidden: tuple[int, ...] = (128, 64), **kw) -> None:
        super().__init__(vocab_size, fields, **kw)
        width = self.n_fields * self.dim
        self.cross_weights = nn.ParameterList(nn.Parameter(torch.randn(width) * 0.01) for _ in range(crosses))
        self.cross_biases = nn.ParameterList(nn.Parameter(torch.zeros(width)) for _ in range(crosses))
        self.dnn = mlp([width, *hidden], self.dropout, last_activation=True)
        self.out = nn.Linear(width + hidden[-1], 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        x0 = self.all_fields(batch).flatten(1)  # [B, W]
        x = x0
        for weight, bias in zip(self.cross_weights, self.cross_biases):
            x = x0 * (x @ weight).unsqueeze(-1) + bias + x  # x_{l+1} = x0 (x_l . w) + b + x_l
        return self.out(torch.cat([x, self.dnn(x0)], dim=1)).squeeze(-1)
