"""FiGNN (Li et al., 2019): fields are nodes of a fully connected graph; messages weighted by attention between
node pairs, GRU-cell node updates with residuals for a few steps, then an attentional sum of per-node scores."""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.backbone import Backbone
from r4ec.ranking.data import Batch


class FiGNN(Backbone):
    def __init__(self, vocab_size: int, fields: int, steps: int = 2, **kw) -> None:
        super().__init__(vocab_size, fields, **kw)
        d = self.dim
        self.steps = steps
        self.edge = nn.Linear(2 * d, 1)
        self.message = nn.Linear(d, d, bias=False)
        self.update = nn.GRUCell(d, d)
        self.node_score = nn.Linear(d, 1)
        self.node_weight = nn.Linear(d, 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        h0 = self.all_fields(batch)  # [B, n, d]
        n = h0.shape[1]
        h = h0
        not_self = ~torch.eye(n, dtype=torch.bool, device=h.device)
        for _ in range(self.steps):
            pairs = torch.cat([h.unsqueeze(2).expand(-1, -1, n, -1), h.unsqueeze(1).expand(-1, n, -1, -1)], -1)
            logits = torch.nn.functional.leaky_relu(self.edge(pairs).squeeze(-1))  # [B, n, n]
            weights = torch.softmax(logits.masked_fill(~not_self, float("-inf")), dim=-1)
            incoming = weights @ self.message(h)  # [B, n, d]
            h = self.update(incoming.reshape(-1, self.dim), h.reshape(-1, self.dim)).view_as(h) + h0
        scores = self.node_score(h).squeeze(-1)  # [B, n]
        weights = torch.sigmoid(self.node_weight(h)).squeeze(-1)
        return (weights * scores).sum(1)
