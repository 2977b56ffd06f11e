"""FiGNN (Li et al., 2019): fields are nodes of a fully connected graph. Each step, node j sends W_out[j] h_j along
edges weighted by attention between node pairs, node i takes the sum in through W_in[i], and a GRU cell shared by
all nodes updates its state (plus a residual to its embedding). Every node then scores the sample; the scores are
summed with weights computed from the whole final graph."""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.backbone import Backbone
from r4ec.ranking.data import Batch


class FiGNN(Backbone):
    """Args:
    steps: rounds of message passing over the field graph
    **kw: Backbone's (dim, knowledge, connector, dropout)
    """

    def __init__(self, vocab_size: int, fields: int, steps: int = 3, **kw) -> None:
        super().__init__(vocab_size, fields, **kw)
        n, d = self.n_fields, self.dim
        self.steps = steps
        self.edge = nn.Linear(2 * d, 1)
        self.w_out = nn.Parameter(torch.randn(n, d, d) * d**-0.5)  # node-specific: what a field sends
        self.w_in = nn.Parameter(torch.randn(n, d, d) * d**-0.5)  # and how a field reads what it receives
        self.update = nn.GRUCell(d, d)
        self.node_score = nn.Linear(d, 1)
        self.node_weight = nn.Sequential(nn.Linear(n * d, n), nn.Sigmoid())

    def forward(self, batch: Batch) -> torch.Tensor:
        h0 = self.all_fields(batch)  # [B, n, d]
        n = h0.shape[1]
        h = h0
        itself = torch.eye(n, dtype=torch.bool, device=h.device)
        receiver, sender = self.edge.weight[0].split(self.dim)  # edge(h_i, h_j) = w_r . h_i + w_s . h_j + b
        for _ in range(self.steps):
            pairs = (h @ receiver).unsqueeze(2) + (h @ sender).unsqueeze(1) + self.edge.bias  # [B, n, n]: i from j
            logits = nn.functional.leaky_relu(pairs)
            weights = torch.softmax(logits.masked_fill(itself, float("-inf")), dim=-1)
            sent = torch.einsum("bjd,jde->bje", h, self.w_out)  # [B, n, d]
            received = torch.einsum("bid,ide->bie", weights @ sent, self.w_in)  # [B, n, d]
            h = self.update(received.reshape(-1, self.dim), h.reshape(-1, self.dim)).view_as(h) + h0
        scores = self.node_score(h).squeeze(-1)  # [B, n]
        return (self.node_weight(h.flatten(1)) * scores).sum(1)
