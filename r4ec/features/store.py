"""Feast, configured from the settings: apply, materialize, point-in-time training sets, online lookups.

`import feast` is slow; only this module and r4ec.features.repo import it, and nothing imports them at start-up.
"""

from __future__ import annotations

import glob
import json
import logging
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import pandas as pd

from r4ec.config import Settings

log = logging.getLogger(__name__)


OFFLINE_STORES = {"duckdb": "duckdb", "asof-duckdb": "r4ec.features.offline.AsofDuckDBOfflineStore"}


def project_name(settings: Settings) -> str:
    return f"r4ec_{settings.dataset.replace('-', '_')}"


def repo_config(settings: Settings):
    from feast.repo_config import RepoConfig

    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    if settings.features.online_store == "redis":
        online = {"type": "redis", "connection_string": settings.features.redis_connection}
    else:
        online = {"type": "sqlite", "path": str(settings.feast_dir / "online.db")}
    return RepoConfig(
        project=project_name(settings),
        provider="local",
        registry=str(settings.feast_dir / "registry.db"),
        offline_store={"type": OFFLINE_STORES[settings.features.offline_store]},
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


def _source_files(view) -> list[Path]:
    path = view.batch_source.path
    return sorted(Path(p) for p in glob.glob(path)) if "*" in path else [Path(path)]


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def materialize(settings: Settings) -> dict[str, int]:
    """Bring the online store up to date with the source files that are new or changed since the last run.

    Feast's own incremental window runs over event time, but knowledge is appended with *historical* as-of times,
    which a window starting at the last run would never see. So each view's source files are fingerprinted; for
    a view with new files, the window starts at the earliest event_timestamp in them: every entity with a row
    there gets its overall latest row, and no other entity is touched. Returns view -> new files loaded.
    """
    import duckdb

    store = feature_store(settings)
    state_path = settings.feast_dir / "materialized.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    loaded = {}
    for view in store.list_feature_views():
        files = {str(p): _fingerprint(p) for p in _source_files(view)}
        seen = state.get(view.name, {})
        new = [p for p, mark in files.items() if seen.get(p) != mark]
        if not new:
            continue
        (start,) = duckdb.sql(f"select min(event_timestamp) from read_parquet({new!r})").fetchall()[0]
        log.info("materializing %s: %d new files, from %s", view.name, len(new), start)
        store.materialize(start_date=start, end_date=datetime.now(UTC), feature_views=[view.name])
        state[view.name] = files
        state_path.write_text(json.dumps(state, indent=1))
        loaded[view.name] = len(new)
    return loaded


class FeaturesError(Exception):
    """A feature store request that cannot be served, in one line."""


def service_sources(settings: Settings, service: str) -> list[Path]:
    """The files a training set from `service` is built from: the CTR samples and every source file of its views."""
    from feast.errors import FeatureServiceNotFoundException

    store = feature_store(settings)
    try:
        projections = store.get_feature_service(service).feature_view_projections
    except FeatureServiceNotFoundException:
        known = ", ".join(sorted(s.name for s in store.list_feature_services())) or "none"
        raise FeaturesError(
            f"feature service '{service}' is not registered (registered: {known}); encode that knowledge run and "
            "run `r4ec features apply`"
        ) from None
    files = [settings.marts_dir / "ctr_samples.parquet"]
    for projection in projections:
        files += _source_files(store.get_feature_view(projection.name))
    return files


def training_set_path(settings: Settings, service: str) -> Path:
    """training/DATASET/SERVICE[-sampleN].parquet: a knowledge service registered from a sampled run says so."""
    limit = settings.knowledge.limit
    return settings.training_dir / f"{service}{f'-sample{limit}' if limit and service != 'base' else ''}.parquet"


def training_set(settings: Settings, samples: pd.DataFrame, service: str) -> pd.DataFrame:
    """The samples (user_id, item_id, event_timestamp, ...) with each feature as of the sample's own time."""
    store = feature_store(settings)
    job = store.get_historical_features(entity_df=samples, features=store.get_feature_service(service))
    return job.to_df()


@lru_cache(maxsize=8)
def serving_store(settings: Settings):
    """One FeatureStore per settings for online lookups: its registry and connections are kept between calls."""
    return feature_store(settings)


def online_features(settings: Settings, user_id: str, item_ids: list[str], service: str) -> pd.DataFrame:
    """One row per candidate item: the user's features and the item's, as the online store holds them now."""
    store = serving_store(settings)
    rows = [{"user_id": user_id, "item_id": item} for item in item_ids]
    return store.get_online_features(features=store.get_feature_service(service), entity_rows=rows).to_df()


def ctr_samples(settings: Settings) -> pd.DataFrame:
    """The CTR samples' keys, label and split: the entity frame of a training set (features come from Feast)."""
    import duckdb

    columns = "sample_id, user_id, item_id, event_timestamp, label, split, position"
    return duckdb.sql(f"select {columns} from read_parquet('{settings.marts_dir / 'ctr_samples.parquet'}')").df()


def write_training_set(settings: Settings, service: str, output: Path | None = None) -> tuple[Path, pd.DataFrame]:
    """The training set of every CTR sample from `service`, as parquet (default: DATA_DIR/training/DATASET/)."""
    import pyarrow as pa

    from r4ec.data.tables import write_parquet

    frame = training_set(settings, ctr_samples(settings), service)
    path = output or training_set_path(settings, service)
    write_parquet(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path, frame
