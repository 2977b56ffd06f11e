"""DIEN (Zhou et al., 2019): an interest-extractor GRU over the history, then an interest-evolving GRU whose
update gate is scaled by the target's attention on each step (AUGRU); the last evolved interest feeds an MLP.
(The auxiliary next-behaviour loss of the paper is not used.)"""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.backbone import Backbone
from r4ec.ranking.data import Batch
from r4ec.ranking.layers import mlp


class AUGRUCell(nn.Module):
    """A GRU cell whose update gate is multiplied by an attention score."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.gates = nn.Linear(2 * size, 2 * size)
        self.candidate = nn.Linear(2 * size, size)

    def forward(self, x: torch.Tensor, h: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        reset, update = torch.sigmoid(self.gates(torch.cat([x, h], -1))).chunk(2, dim=-1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * h], -1)))
        update = attention.unsqueeze(-1) * update
        return (1 - update) * h + update * candidate


class DIEN(Backbone):
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
        self.extractor = nn.GRU(item, item, batch_first=True)
        self.score = mlp([4 * item, attention_hidden, 1])
        self.evolver = AUGRUCell(item)
        self.dnn = mlp([self.n_fields * self.dim + 2 * item, *hidden, 1], self.dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        target = self.embeddings.target_item(batch)  # [B, e]
        interests, _ = self.extractor(self.embeddings.history(batch))  # [B, K, e]
        query = target.unsqueeze(1).expand_as(interests)
        scores = self.score(torch.cat([query, interests, query - interests, query * interests], -1)).squeeze(-1)
        scores = torch.softmax(scores.masked_fill(~batch.history_mask, float("-inf")), dim=1).nan_to_num(0.0)  # [B, K]
        evolved = torch.zeros_like(target)
        for step in range(interests.shape[1]):  # K is small (10): a loop over steps, not rows
            updated = self.evolver(interests[:, step], evolved, scores[:, step])
            evolved = torch.where(batch.history_mask[:, step : step + 1], updated, evolved)  # padding keeps the state
        inputs = torch.cat([self.all_fields(batch).flatten(1), target, evolved], dim=1)
        return self.dnn(inputs).squeeze(-1)
