"""Feast, configured from the settings: apply, materialize, point-in-time training sets, online lookups.

`import feast` is slow; only this module and r4ec.features.repo import it, and nothing imports them at start-up.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pandas as pd

from r4ec.config import Settings

log = logging.getLogger(__name__)


def repo_config(settings: Settings):
    from feast.repo_config import RepoConfig

    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    if settings.features.online_store == "redis":
        online = {"type": "redis", "connection_string": settings.features.redis_connection}
    else:
        online = {"type": "sqlite", "path": str(settings.feast_dir / "online.db")}
    return RepoConfig(
        project=f"r4ec_{settings.dataset.replace('-', '_')}",
        provider="local",
        registry=str(settings.feast_dir / "registry.db"),
        offline_store={"type": "duckdb"},
        online_store=online,
        entity_key_serialization_version=3,
        repo_path=str(settings.feast_dir),
    )


def feature_store(settings: Settings):
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings))


def apply(settings: Settings) -> list[str]:
    """Register entities, views and services; returns the feature services now registered."""
    from r4ec.features.repo import definitions

    store = feature_store(settings)
    objects = definitions(settings)
    store.apply(objects)
    return sorted(s.name for s in store.list_feature_services())


def materialize(settings: Settings, end: datetime | None = None) -> None:
    """Load the latest row per entity of every view into the online store, up to `end` (now)."""
    store = feature_store(settings)
    store.materialize_incremental(end_date=end or datetime.now(timezone.utc))


def training_set(settings: Settings, samples: pd.DataFrame, service: str) -> pd.DataFrame:
    """The samples (user_id, item_id, event_timestamp, ...) with each feature as of the sample's own time."""
    store = feature_store(settings)
    job = store.get_historical_features(entity_df=samples, features=store.get_feature_service(service))
    return job.to_df()


def online_features(settings: Settings, user_id: str, item_ids: list[str], service: str) -> pd.DataFrame:
    """One row per candidate item: the user's features and the item's, as the online store holds them now."""
    store = feature_store(settings)
    rows = [{"user_id": user_id, "item_id": item} for item in item_ids]
    return store.get_online_features(features=store.get_feature_service(service), entity_rows=rows).to_df()
