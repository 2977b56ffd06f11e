"""Knowledge connectors: knowledge vectors [B, N, D] -> small dense fields [B, N, d] for a backbone.

mlp     the paper's connector: one MLP per knowledge type (user preference, item facts)
experts KAR's hybrid-expert adaptor: experts shared by all knowledge types plus experts specific to each, mixed by
        one softmax gate per knowledge type
"""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.layers import mlp


class MLPConnector(nn.Module):
    def __init__(self, types: int, in_dim: int, out_dim: int, hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.per_type = nn.ModuleList(mlp([in_dim, hidden, out_dim], dropout) for _ in range(types))

    def forward(self, knowledge: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(knowledge[:, n]) for n, net in enumerate(self.per_type)], dim=1)  # [B, N, d]


class HybridExpertConnector(nn.Module):
    def __init__(
        self, types: int, in_dim: int, out_dim: int, hidden: int = 128, shared: int = 2, specific: int = 2,
        dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.shared = nn.ModuleList(mlp([in_dim, hidden, out_dim], dropout) for _ in range(shared))
        self.specific = nn.ModuleList(
            nn.ModuleList(mlp([in_dim, hidden, out_dim], dropout) for _ in range(specific)) for _ in range(types)
        )
        self.gates = nn.ModuleList(nn.Linear(in_dim, shared + specific) for _ in range(types))

    def forward(self, knowledge: torch.Tensor) -> torch.Tensor:
        fields = []
        for n, (gate, own) in enumerate(zip(self.gates, self.specific)):
            vector = knowledge[:, n]  # [B, D]
            experts = torch.stack([e(vector) for e in [*self.shared, *own]], dim=1)  # [B, E, d]
            weights = torch.softmax(gate(vector), dim=-1).unsqueeze(-1)  # [B, E, 1]
            fields.append((weights * experts).sum(1))
        return torch.stack(fields, dim=1)  # [B, N, d]


CONNECTORS = {"mlp": MLPConnector, "experts": HybridExpertConnector}
