"""DeepFM (Guo et al., 2017): a factorization machine and a DNN over the same field embeddings."""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.backbone import Backbone
from r4ec.ranking.data import Batch
from r4ec.ranking.layers import mlp


def pairwise_interactions(fields: torch.Tensor) -> torch.Tensor:
    """The FM second-order term, sum over field pairs i < j of <v_i, v_j>: [B, F, d] -> [B]. Computed in O(F d) as
    half of (square of the sum - sum of the squares); a function of its own so a test can check it by brute force."""
    square_of_sum = fields.sum(1).pow(2)  # [B, d]
    sum_of_squares = fields.pow(2).sum(1)  # [B, d]
    return 0.5 * (square_of_sum - sum_of_squares).sum(1)


class DeepFM(Backbone):
    """Args:
    hidden: the widths of the DNN's hidden layers
    **kw: Backbone's (dim, knowledge, connector, dropout)
    """

    def __init__(self, vocab_size: int, fields: int, hidden: tuple[int, ...] = (128, 64), **kw) -> None:
        super().__init__(vocab_size, fields, **kw)
        self.first_order = nn.Embedding(vocab_size, 1, padding_idx=0)
        nn.init.zeros_(self.first_order.weight)
        self.dnn = mlp([self.n_fields * self.dim, *hidden, 1], self.dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        fields = self.all_fields(batch)  # [B, F', d]
        linear = self.first_order(batch.fields).sum(dim=(1, 2))  # [B]
        fm = pairwise_interactions(fields)  # [B]
        deep = self.dnn(fields.flatten(1)).squeeze(-1)  # [B]
        return linear + fm + deep
