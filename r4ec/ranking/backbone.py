"""What every backbone shares: the embeddings, and the knowledge connector that turns knowledge vectors into
extra dense fields of the embedding size (an extra field for field-interaction models).

A sample without a knowledge vector (the entity was not generated, or its knowledge is dated after the sample) gets
a learned "missing" field per knowledge type instead of the connector's output for a zero vector: whether knowledge
exists is itself a signal, and it correlates with time and split, so the model must be able to tell."""

from __future__ import annotations

import torch
from torch import nn

from r4ec.ranking.connectors import CONNECTORS
from r4ec.ranking.data import Batch
from r4ec.ranking.layers import Embeddings, masked_mean


class Backbone(nn.Module):
    """Args:
    vocab_size: rows of the id table (every field's ids share it)
    fields: the categorical fields of a sample
    dim: the embedding size, d
    knowledge_types: knowledge vectors per sample (user, item), 0 for none
    knowledge_dim: the width of a knowledge vector, D
    connector: a name of CONNECTORS
    dropout: in the MLPs and the connector
    """

    def __init__(
        self, vocab_size: int, fields: int, dim: int = 16, knowledge_types: int = 0, knowledge_dim: int = 0,
        connector: str = "mlp", dropout: float = 0.1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.embeddings = Embeddings(vocab_size, dim)
        self.connector = (
            CONNECTORS[connector](knowledge_types, knowledge_dim, dim, dropout=dropout) if knowledge_types else None
        )
        self.missing_knowledge = nn.Parameter(torch.zeros(knowledge_types, dim)) if knowledge_types else None  # [N, d]
        self.dim, self.dropout = dim, dropout
        self.n_fields = fields + 2 + knowledge_types  # categorical fields, pooled history items and ratings, knowledge

    def knowledge_fields(self, batch: Batch) -> torch.Tensor | None:
        if self.connector is None:
            return None
        fields = self.connector(batch.knowledge)  # [B, N, d]
        if batch.knowledge_mask is None:
            return fields
        return torch.where(batch.knowledge_mask.unsqueeze(-1), fields, self.missing_knowledge)  # [B, N, d]

    def all_fields(self, batch: Batch) -> torch.Tensor:
        """Categorical fields, the means of the history's item and rating embeddings, and the knowledge fields:
        [B, F+2+N, d]."""
        history_items = self.embeddings.table(batch.history[:, :, 0])  # [B, K, d]
        history_ratings = self.embeddings.rating_field(self.embeddings.rating_ids(batch))  # [B, K, d]
        parts = [
            self.embeddings.fields(batch),
            masked_mean(history_items, batch.history_mask).unsqueeze(1),
            masked_mean(history_ratings, batch.history_mask).unsqueeze(1),
        ]
        knowledge = self.knowledge_fields(batch)
        if knowledge is not None:
            parts.append(knowledge)
        return torch.cat(parts, dim=1)
