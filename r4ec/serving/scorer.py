"""Score one user's candidates with a published run: online features -> the training set's columns -> the same
`to_tensors` the run was trained through -> one forward pass. Sharing that path is what keeps online = offline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from r4ec.ranking.runs import SavedRun
from r4ec.serving.online import OnlineFeatures

COLD = "\x00cold"  # an id no vocabulary holds: a user or item missing from the store gets its field's unknown id
USER_COLUMNS = {"user_id": pa.string(), "age": pa.int32(), "gender": pa.string(), "occupation": pa.string(),
                "history_item_ids": pa.list_(pa.string()), "history_categories": pa.list_(pa.string()),
                "history_brands": pa.list_(pa.string()), "history_ratings": pa.list_(pa.float64()),
                "user_knowledge_vector": pa.list_(pa.float32())}  # fmt: skip
ITEM_COLUMNS = {"item_id": pa.string(), "category": pa.string(), "brand": pa.string(),
                "item_knowledge_vector": pa.list_(pa.float32())}  # fmt: skip


@dataclass
class Ranked:
    """A ranking answer: items best first, each with its score and whether it was scored cold."""

    items: list[dict]
    user_cold: bool
    user_knowledge_missing: bool | None  # None: the run uses no knowledge
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds: features, model


def candidates_table(user_id: str, user: dict | None, item_ids: list[str], items: list[dict | None]) -> pa.Table:
    """The training set's columns for these candidates (one row each), from online feature rows (None: cold)."""
    user = {**(user or {}), "user_id": user_id if user is not None else COLD}
    items = [{**(row or {}), "item_id": item if row is not None else COLD} for item, row in zip(item_ids, items)]
    columns = {name: pa.array([user.get(name)] * len(items), kind) for name, kind in USER_COLUMNS.items()}
    columns |= {name: pa.array([row.get(name) for row in items], kind) for name, kind in ITEM_COLUMNS.items()}
    return pa.table(columns)


class Ranker:
    """A loaded run and the online features of the service it was trained on."""

    def __init__(self, run: SavedRun, features: OnlineFeatures) -> None:
        from r4ec.ranking.train import KNOWLEDGE_COLUMNS

        self.run, self.features = run, features
        self.knowledge = () if run.config["knowledge"] == "none" else KNOWLEDGE_COLUMNS

    def scores(self, table: pa.Table) -> np.ndarray:
        """Click probabilities of the table's rows (one user's candidates), in one forward pass."""
        import torch

        from r4ec.ranking.data import to_tensors

        run = self.run
        tensors = to_tensors(table, run.vocab, run.history_length, self.knowledge, run.config["knowledge_dim"], one_user=True)
        with torch.inference_mode():
            return torch.sigmoid(self.run.model(tensors.batch(torch.arange(len(tensors))))).numpy().astype(np.float64)

    def rank(self, user_id: str, item_ids: list[str], top_k: int | None = None) -> Ranked:
        started = time.perf_counter()
        user = self.features.user(user_id)
        items = self.features.item_rows(item_ids)
        read = time.perf_counter()
        scores = self.scores(candidates_table(user_id, user, item_ids, items))
        scored = time.perf_counter()
        order = np.argsort(-scores, kind="stable")[:top_k]
        ranked = [{"item_id": item_ids[n], "score": float(scores[n]), "cold": items[n] is None,
                   "knowledge_missing": self._missing(items[n], "item")} for n in order]  # fmt: skip
        return Ranked(ranked, user is None, self._missing(user, "user"), {"features": read - started, "model": scored - read})

    def _missing(self, row: dict | None, entity: str) -> bool | None:
        """Whether the row lacks the knowledge the run was trained with; None for a run without knowledge."""
        if not self.knowledge:
            return None
        return row is None or bool(row.get(f"{entity}_knowledge_missing", True))
