"""DIN (Zhou et al., 2018): attention of the target item over the behaviour history, then an MLP."""

from __future__ import annotations

import torch

from r4ec.ranking.backbone import Backbone
from r4ec.ranking.data import Batch
from r4ec.ranking.layers import TargetAttention, mlp


class DIN(Backbone):
    """Args:
    hidden: the widths of the MLP's hidden layers
    attention_hidden: the width of the attention's scoring MLP
    **kw: Backbone's (dim, knowledge, connector, dropout)
    """

    def __init__(
        self, vocab_size: int, fields: int, hidden: tuple[int, ...] = (128, 64), attention_hidden: int = 64, **kw
    ) -> None:
        super().__init__(vocab_size, fields, **kw)
        item = 3 * self.dim  # item id, category, brand
        self.attention = TargetAttention(item, attention_hidden)
        self.dnn = mlp([self.n_fields * self.dim + 2 * item, *hidden, 1], self.dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        target = self.embeddings.target_item(batch)  # [B, 3d]
        history = self.embeddings.history(batch)  # [B, K, 3d]
        interest = self.attention(target, history, batch.history_mask)  # [B, 3d]
        inputs = torch.cat([self.all_fields(batch).flatten(1), target, interest], dim=1)
        return self.dnn(inputs).squeeze(-1)
