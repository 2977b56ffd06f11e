"""GRU4Rec as a CTR model (the R4ec paper's variant): a GRU over the behaviour history, attention of the target
item over the GRU's states, then an MLP over the fields, the target and the attended interest."""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.backbone import Backbone
from r4ec.ranking.data import Batch
from r4ec.ranking.layers import TargetAttention, mlp


class GRU4Rec(Backbone):
    """Args:
    hidden: the widths of the MLP's hidden layers
    attention_hidden: the width of the attention's scoring MLP
    **kw: Backbone's (dim, knowledge, connector, dropout)
    """

    def __init__(
        self, vocab_size: int, fields: int, hidden: tuple[int, ...] = (128, 64), attention_hidden: int = 64, **kw
    ) -> None:
        super().__init__(vocab_size, fields, **kw)
        item = 3 * self.dim
        self.gru = nn.GRU(item, item, batch_first=True)
        self.attention = TargetAttention(item, attention_hidden)
        self.dnn = mlp([self.n_fields * self.dim + 2 * item, *hidden, 1], self.dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        target = self.embeddings.target_item(batch)  # [B, 3d]
        states, _ = self.gru(self.embeddings.history(batch))  # [B, K, 3d]; histories are left-aligned
        interest = self.attention(target, states, batch.history_mask)  # padded steps are masked out
        inputs = torch.cat([self.all_fields(batch).flatten(1), target, interest], dim=1)
        return self.dnn(inputs).squeeze(-1)
