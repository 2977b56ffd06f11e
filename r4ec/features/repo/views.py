"""Feature views. No TTL: a sample sees the latest row at or before its own time, however old."""

from __future__ import annotations

import logging
from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, Float64, Int32, Int64, String

from r4ec.config import Settings
from r4ec.features.repo.entities import ITEM, USER
from r4ec.features.repo.sources import knowledge_source, mart_source
from r4ec.layout import knowledge_runs

log = logging.getLogger(__name__)
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
    """Two views (user, item) per knowledge run whose vectors are complete on disk: full runs and samples alike,
    each under its own name (`user_knowledge_iterative`, `user_knowledge_iterative_sample20`)."""
    from r4ec.knowledge.runs import disagreements

    views = {}
    for run in knowledge_runs(settings):
        mixed = disagreements(settings, run)
        if mixed:
            log.warning("knowledge run %s is not served: its user and item knowledge differ in %s; regenerate one "
                        "of them with the other's settings", run.folder, ", ".join(mixed))  # fmt: skip
            continue
        for entity, key in (("user", USER), ("item", ITEM)):
            view = FeatureView(
                name=f"{entity}_knowledge_{run.service}", entities=[key], ttl=FOREVER,
                source=knowledge_source(settings, entity, run),
                schema=[Field(name=f"{entity}_knowledge_vector", dtype=Array(Float32),
                              description=f"The {entity}'s knowledge text encoded by the run's sentence encoder "
                                          "(L2-normalised; 384-d for all-MiniLM-L6-v2)."),
                        Field(name=f"{entity}_knowledge_quality", dtype=String,
                              description="parsed, or fallback: a raw reply or unjudged answers stand in.")],
                tags={"knowledge_run": run.folder},
            )  # fmt: skip
            views[view.name] = view
    return views
