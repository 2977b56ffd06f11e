"""A feature service's online features for one user and many items, read through Feast's provider.

`get_online_features` resolves the service, builds response protos and converts them per call (tens of ms); a ranking
call reads the same views every time, so the views are resolved once and each request reads them with the provider's
`online_read` (one query per view), the same call `get_online_features` ends in. Item features are held in memory,
read for every item at start and again by `reload()` after a materialize; an item not held is read on request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow.parquet as pq

from r4ec.config import Settings
from r4ec.serving import ServingError

log = logging.getLogger(__name__)
READ_CHUNK = 500  # entity keys per online_read


@dataclass(frozen=True)
class View:
    view: object  # feast.FeatureView
    features: tuple[str, ...]
    knowledge: bool  # a knowledge view: its absence is the missing-knowledge flag


class OnlineFeatures:
    """The user's and the items' features of `service`, as the online store holds them now."""

    def __init__(self, settings: Settings, service: str) -> None:
        from feast.errors import FeatureServiceNotFoundException

        from r4ec.features.store import feature_store

        store = feature_store(settings)
        self.config, self.provider, self.service = store.config, store._get_provider(), service
        try:
            projections = store.get_feature_service(service).feature_view_projections
        except FeatureServiceNotFoundException:
            raise ServingError(f"feature service '{service}' is not registered: run `r4ec features apply`") from None
        views = [store.get_feature_view(p.name) for p in projections]
        features = {p.name: tuple(f.name for f in p.features) for p in projections}
        by_key: dict[str, list[View]] = {"user_id": [], "item_id": []}
        for view in views:
            by_key[view.entity_columns[0].name].append(View(view, features[view.name], "knowledge_run" in view.tags))
        self.user_views, self.item_views = by_key["user_id"], by_key["item_id"]
        self.item_ids = self._catalogue()
        self.items: dict[str, dict] = {}
        self.reload()

    def _catalogue(self) -> list[str]:
        """Every item id the item views' sources hold: what the in-memory item features are read for."""
        from r4ec.features.store import source_files

        ids: set[str] = set()
        for part in self.item_views:
            for file in source_files(part.view):
                ids.update(str(i) for i in pq.read_table(file, columns=["item_id"]).column(0).to_pylist())
        return sorted(ids)

    def reload(self) -> int:
        """Read every catalogued item's features again; returns how many the store holds."""
        try:
            held = self._read(self.item_views, "item_id", self.item_ids)
        except Exception as error:  # sqlite's "no such table", redis refusing the connection, ...
            raise ServingError(f"the online store cannot be read ({type(error).__name__}: {error}): run "
                               "`r4ec features materialize`, and check the online store settings") from None  # fmt: skip
        self.items = {item: row for item, row in zip(self.item_ids, held) if row is not None}
        log.info("item features of '%s': %d of %d catalogued items held in memory", self.service, len(self.items),
                 len(self.item_ids))  # fmt: skip
        return len(self.items)

    def user(self, user_id: str) -> dict | None:
        """The user's features (None for a feature the store lacks), or None when the store has none of them."""
        return self._read(self.user_views, "user_id", [user_id])[0]

    def item_rows(self, item_ids: list[str]) -> list[dict | None]:
        """Each item's features: from memory, else from the store (an item materialized since the last reload)."""
        rows = [self.items.get(item) for item in item_ids]
        absent = [item for item, row in zip(item_ids, rows) if row is None]
        if absent:
            found = dict(zip(absent, self._read(self.item_views, "item_id", absent)))
            rows = [row if row is not None else found[item] for item, row in zip(item_ids, rows)]
        return rows

    def _read(self, views: list[View], key: str, ids: list[str]) -> list[dict | None]:
        """Per id: feature -> value over `views` (with `<key>_knowledge_missing`), or None when no view has the id."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        rows: list[dict] = [{} for _ in ids]
        seen = [False] * len(ids)
        entity = key.removesuffix("_id")
        for part in views:
            for start in range(0, len(ids), READ_CHUNK):
                chunk = ids[start : start + READ_CHUNK]
                keys = [EntityKey(join_keys=[key], entity_values=[Value(string_val=i)]) for i in chunk]
                read = self.provider.online_read(self.config, part.view, keys, list(part.features))
                for n, (_, values) in enumerate(read, start=start):
                    values = values or {}
                    seen[n] = seen[n] or bool(values)
                    for name in part.features:
                        rows[n][name] = feast_value_type_to_python_type(values[name]) if name in values else None
                    if part.knowledge:
                        rows[n][f"{entity}_knowledge_missing"] = not values
        return [row if found else None for row, found in zip(rows, seen)]
