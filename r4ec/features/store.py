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

from r4ec import fingerprint, layout
from r4ec.config import Settings
from r4ec.console import prints_to_log

log = logging.getLogger(__name__)


class FeaturesError(Exception):
    """A feature store request that cannot be served, in one line."""


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


def feast_cli_env(settings: Settings) -> dict[str, object]:
    """What feature_repo/feature_store.yaml reads, from the same repo_config as every r4ec features command: the feast
    CLI then talks to the same registry and stores (online store type and its one path or connection setting)."""
    config = repo_config(settings)  # also creates the feast folder, which Feast's file registry wants
    online = dict(config.online_config)
    online_type = online.pop("type")
    if len(online) != 1:
        raise FeaturesError(f"feature_repo/feature_store.yaml takes one online store setting, not {sorted(online)}")
    ((online_key, online_value),) = online.items()
    return {
        "R4EC_FEAST_PROJECT": config.project,
        "R4EC_FEAST_REGISTRY": config.registry.path,
        "R4EC_FEAST_OFFLINE_STORE": config.offline_config["type"],
        "R4EC_FEAST_ONLINE_STORE": online_type,
        "R4EC_FEAST_ONLINE_KEY": online_key,
        "R4EC_FEAST_ONLINE_VALUE": online_value,
        "R4EC_FEAST_ENTITY_KEY_VERSION": config.entity_key_serialization_version,
    }


def feature_store(settings: Settings):
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings))


def apply(settings: Settings) -> list[str]:
    """Make the registry hold exactly the definitions of these settings: register entities, views and services, and
    delete every view, service and source that is not among them (e.g. a removed knowledge run), so that a name can
    never serve stale data. Returns the feature services now registered."""
    from r4ec.features.repo import definitions

    store = feature_store(settings)
    objects = definitions(settings)
    names = {getattr(o, "name", None) for o in objects} | {o.batch_source.name for o in objects if hasattr(o, "batch_source")}
    stale = [
        *(s for s in store.list_feature_services() if s.name not in names),
        *(v for v in store.list_feature_views() if v.name not in names),
        *(d for d in store.list_data_sources() if d.name not in names),
    ]
    for obj in stale:
        log.info("feast: removing %s '%s' (no longer defined)", type(obj).__name__, obj.name)
    store.apply(objects, objects_to_delete=stale, partial=False)
    _forget_materialized(settings, {o.name for o in stale})
    return sorted(s.name for s in store.list_feature_services())


def _forget_materialized(settings: Settings, views: set[str]) -> None:
    """A deleted view's files must be loaded again if a view of that name comes back."""
    state_path = settings.feast_dir / "materialized.json"
    if views and state_path.is_file():
        state = json.loads(state_path.read_text())
        state_path.write_text(json.dumps({k: v for k, v in state.items() if k not in views}, indent=1))


def source_files(view) -> list[Path]:
    """The parquet files a view's batch source names (a glob where the path has one)."""
    path = view.batch_source.path
    return sorted(Path(p) for p in glob.glob(path)) if "*" in path else [Path(path)]


def materialize(settings: Settings) -> dict[str, int]:
    """Bring the online store up to date with the source files that are new or changed since the last run.

    Feast's own incremental window runs over event time, but knowledge is appended with *historical* as-of times,
    which a window starting at the last run would never see. So each view's source files are hashed (content); for
    a view with new files, the window starts at the earliest event_timestamp in them: every entity with a row
    there gets its overall latest row, and no other entity is touched. Returns view -> new files loaded.
    """
    import duckdb

    store = feature_store(settings)
    state_path = settings.feast_dir / "materialized.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    loaded = {}
    for view in store.list_feature_views():
        sources = _complete_files(settings, view) if "knowledge_run" in view.tags else source_files(view)
        files = {str(p): fingerprint.of_file(p) for p in sources}
        seen = state.get(view.name, {})
        new = [p for p, mark in files.items() if seen.get(p) != mark]
        if not new:
            continue
        (start,) = duckdb.sql(f"select min(event_timestamp) from read_parquet({new!r})").fetchall()[0]
        log.info("materializing %s: %d new files, from %s", view.name, len(new), start)
        with prints_to_log("feast"):  # its coloured per-view lines; stdout holds r4ec's summary
            store.materialize(start_date=start, end_date=datetime.now(UTC), feature_views=[view.name])
        state[view.name] = files
        state_path.write_text(json.dumps(state, indent=1))
        loaded[view.name] = len(new)
    return loaded


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
    samples = layout.mart_path(settings, "ctr_samples")
    if not samples.is_file():
        raise FeaturesError(f"{samples} not found: run `r4ec marts build` first")
    files = [samples]
    for projection in projections:
        view = store.get_feature_view(projection.name)
        files += _complete_files(settings, view) if "knowledge_run" in view.tags else source_files(view)
    return files


def _complete_files(settings: Settings, view) -> list[Path]:
    """A knowledge view's vector parts, exactly as `knowledge encode` finished them: a run being regenerated or
    re-encoded (no `_COMPLETE.json`, or parts that differ from it) is not read under the run's name."""
    from r4ec.encoding import stale_vectors
    from r4ec.layout import COMPLETE, KnowledgeRun, knowledge_dir, vectors_dir

    entity, run = view.name.split("_", 1)[0], KnowledgeRun.parse(view.tags["knowledge_run"])
    target, knowledge = vectors_dir(settings, entity, run), knowledge_dir(settings, entity, run)
    files = source_files(view)
    marker = target / COMPLETE
    complete = json.loads(marker.read_text()) if marker.is_file() else {}
    if complete.get("parts") != {p.name: fingerprint.of_file(p) for p in files}:
        raise FeaturesError(f"{target}: the vectors are not those `r4ec knowledge encode` completed (being "
                            "regenerated or re-encoded?): finish `r4ec knowledge encode`, then `r4ec features apply`")  # fmt: skip
    if stale := stale_vectors(target, knowledge, complete["encoder"]):
        raise FeaturesError(f"{target}: {len(stale)} parts are not the vectors of the knowledge at {knowledge} (first "
                            f"{stale[0]}; knowledge made again since they were encoded?): run `r4ec knowledge encode`, "
                            "then `r4ec features apply`")  # fmt: skip
    return files


def service_fingerprint(settings: Settings, service: str) -> str:
    """What a training set from `service` is built from: the content of the CTR samples and of every source file
    of its views, and the views' names and fields. Files are named relative to the data dir: the same data in
    another data dir (restored from an archive on another machine) is the same training set."""
    root = settings.data_dir.resolve()
    files = {str(path.relative_to(root) if path.is_relative_to(root) else path): fingerprint.of_file(path)
             for path in service_sources(settings, service)}  # fmt: skip
    projections = feature_store(settings).get_feature_service(service).feature_view_projections
    features = {p.name: sorted(f.name for f in p.features) for p in projections}
    return fingerprint.of_json({"service": service, "features": features, "files": files})


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

    path = layout.mart_path(settings, "ctr_samples")
    if not path.is_file():
        raise FeaturesError(f"{path} not found: run `r4ec marts build` first")
    columns = "sample_id, user_id, item_id, event_timestamp, label, split, position"
    return duckdb.sql(f"select {columns} from read_parquet('{path}')").df()


TRAINING_SET_STAMP = b"r4ec.sources"  # parquet metadata key: the service fingerprint a training set was built from


def write_training_set(
    settings: Settings, service: str, output: Path | None = None, stamp: str | None = None
) -> tuple[Path, pd.DataFrame]:
    """The training set of every CTR sample from `service`, as parquet (default: DATA_DIR/training/DATASET/),
    stamped with the fingerprint of what it was built from (`stamp`, when the caller has just computed it)."""
    import pyarrow as pa

    from r4ec.data.tables import write_parquet

    stamp = stamp or service_fingerprint(settings, service)
    frame = training_set(settings, ctr_samples(settings), service)
    path = output or layout.training_set_path(settings, service)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    write_parquet(table.replace_schema_metadata({**(table.schema.metadata or {}), TRAINING_SET_STAMP: stamp.encode()}), path)
    return path, frame


def training_set_stamp(path: Path) -> str | None:
    return fingerprint.read_stamp(path, TRAINING_SET_STAMP)
