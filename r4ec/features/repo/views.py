"""Feature views. No TTL: a sample sees the latest row at or before its own time, however old."""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, Float64, Int32, Int64, String

from r4ec.config import Settings
from r4ec.features.repo.entities import ITEM, USER
from r4ec.features.repo.sources import knowledge_source, mart_source, vectors_path

FOREVER = timedelta(0)


def profile_views(settings: Settings) -> dict[str, FeatureView]:
    user_profile = FeatureView(
        name="user_profile", entities=[USER], ttl=FOREVER, source=mart_source(settings, "user_profile"),
        schema=[Field(name="age", dtype=Int32), Field(name="gender", dtype=String),
                Field(name="occupation", dtype=String), Field(name="zip_code", dtype=String)],
    )  # fmt: skip
    item_profile = FeatureView(
        name="item_profile", entities=[ITEM], ttl=FOREVER, source=mart_source(settings, "item_profile"),
        schema=[Field(name="title", dtype=String), Field(name="release_year", dtype=Int32),
                Field(name="category", dtype=String), Field(name="brand", dtype=String)],
    )  # fmt: skip
    user_history = FeatureView(
        name="user_history", entities=[USER], ttl=FOREVER, source=mart_source(settings, "user_history"),
        schema=[Field(name="history_item_ids", dtype=Array(String)),
                Field(name="history_categories", dtype=Array(String)),
                Field(name="history_brands", dtype=Array(String)),
                Field(name="history_ratings", dtype=Array(Float64)),
                Field(name="history_length", dtype=Int64)],
    )  # fmt: skip
    return {view.name: view for view in (user_profile, item_profile, user_history)}


def knowledge_views(settings: Settings) -> dict[str, FeatureView]:
    """One view per entity and encoded knowledge run (strategy); runs not encoded yet are left out."""
    views = {}
    for strategy in settings.features.knowledge_strategies:
        for entity, key in (("user", USER), ("item", ITEM)):
            if not any(vectors_path(settings, entity, strategy).glob("part-*.parquet")):
                continue
            view = FeatureView(
                name=f"{entity}_knowledge_{strategy}", entities=[key], ttl=FOREVER,
                source=knowledge_source(settings, entity, strategy),
                schema=[Field(name=f"{entity}_knowledge_vector", dtype=Array(Float32))],
            )  # fmt: skip
            views[view.name] = view
    return views
