"""Real Feast (DuckDB offline store, SQLite online store) over the real marts and knowledge-vector parquet."""

from __future__ import annotations

import shutil
from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r4ec.config import Settings
from r4ec.features import store
from tests.sample_files import write_vectors

pytestmark = pytest.mark.integration
KEYS = "sample_id, user_id, item_id, event_timestamp, label, split"


def feast_settings(ml1m: Settings, tmp_path, **features) -> Settings:
    shutil.copytree(ml1m.marts_dir, tmp_path / "marts" / "ml-1m")
    return Settings(data_dir=tmp_path, dataset="ml-1m", features=features)


def samples(settings: Settings):
    return duckdb.sql(f"select {KEYS} from read_parquet('{settings.marts_dir}/ctr_samples.parquet')").df()


@pytest.fixture
def feast_store(ml1m, tmp_path):
    """ml-1m marts with iterative knowledge for every user and item, dated at each one's first sample."""
    settings = feast_settings(ml1m, tmp_path)
    frame = samples(settings)
    first_user = frame.groupby("user_id").event_timestamp.min()
    first_item = frame.groupby("item_id").event_timestamp.min()
    write_vectors(settings, "user", "iterative", 0, [(u, t, 1.0) for u, t in first_user.items()])
    write_vectors(settings, "item", "iterative", 0, [(i, t, 2.0) for i, t in first_item.items()])
    assert store.apply(settings) == ["base", "iterative"]
    return settings, frame, first_user


def test_point_in_time_knowledge_and_regeneration(feast_store):
    settings, frame, first_user = feast_store
    user = frame.user_id.value_counts().index[0]
    theirs = frame[frame.user_id == user].sort_values("event_timestamp")
    cut = theirs.event_timestamp.iloc[len(theirs) // 2]
    write_vectors(settings, "user", "iterative", 1, [(user, cut, 3.0)])  # a regeneration, as of a later time
    got = store.training_set(settings, frame, "iterative")
    assert len(got) == len(frame)
    mine = got[got.user_id == user].sort_values("event_timestamp")
    for _, row in mine.iterrows():
        expected = 3.0 if row.event_timestamp >= cut else 1.0
        assert np.allclose(row.user_knowledge_vector, expected)
    assert all(np.allclose(v, 2.0) for v in got.item_knowledge_vector)


def test_knowledge_dated_after_a_sample_never_reaches_it(feast_store, tmp_path):
    settings, frame, first_user = feast_store
    user = frame.user_id.iloc[0]
    later = first_user[user] + timedelta(days=10_000)
    write_vectors(settings, "user", "iterative", 1, [(user, later, 9.0)])
    got = store.training_set(settings, frame[frame.user_id == user], "iterative")
    assert not any(np.allclose(v, 9.0) for v in got.user_knowledge_vector)
    earlier = frame[frame.user_id == user].copy()
    earlier["event_timestamp"] = first_user[user] - timedelta(seconds=1)  # before any knowledge of theirs
    missing = store.training_set(settings, earlier.head(1), "iterative")
    assert missing.user_knowledge_vector.isna().all()


def test_base_service_has_history_and_profiles_as_of_the_sample(feast_store):
    settings, frame, _ = feast_store
    got = store.training_set(settings, frame, "base").set_index("sample_id")
    marts = duckdb.sql(f"select sample_id, history_item_ids from read_parquet('{settings.marts_dir}/ctr_samples.parquet')")
    for sample_id, history in marts.fetchall():
        assert list(got.loc[sample_id, "history_item_ids"]) == history
    assert got.gender.notna().all() and got.category.notna().all()


def test_materialize_then_lookup_returns_the_latest(feast_store):
    settings, frame, first_user = feast_store
    user = frame.user_id.iloc[0]
    write_vectors(settings, "user", "iterative", 1, [(user, first_user[user] + timedelta(days=1), 5.0)])
    store.materialize(settings)
    items = list(frame[frame.user_id == user].item_id.head(3)) + ["no-such-item"]
    got = store.online_features(settings, user, items, "iterative")
    assert list(got.item_id) == items
    assert all(np.allclose(v, 5.0) for v in got.user_knowledge_vector)
    assert all(np.allclose(v, 2.0) for v in got.item_knowledge_vector.iloc[:3])
    assert got.item_knowledge_vector.iloc[3] is None and got.title.iloc[3] is None  # a missing item: typed None


def test_materialize_loads_only_what_is_new_even_with_historical_times(feast_store):
    settings, frame, first_user = feast_store
    assert set(store.materialize(settings)) == {"user_profile", "item_profile", "user_history",
                                               "user_knowledge_iterative", "item_knowledge_iterative"}  # fmt: skip
    assert store.materialize(settings) == {}
    user = frame.user_id.iloc[0]
    write_vectors(settings, "user", "iterative", 1, [(user, first_user[user] + timedelta(days=2), 7.0)])
    assert store.materialize(settings) == {"user_knowledge_iterative": 1}  # as of 2000, appended today
    got = store.online_features(settings, user, [frame.item_id.iloc[0]], "iterative")
    assert np.allclose(got.user_knowledge_vector.iloc[0], 7.0)
    other = frame.user_id[frame.user_id != user].iloc[0]
    assert np.allclose(store.online_features(settings, other, ["x"], "iterative").user_knowledge_vector.iloc[0], 1.0)


def test_the_redis_online_store_serves_the_same_features(ml1m, tmp_path, redis_server):
    settings = feast_settings(ml1m, tmp_path, online_store="redis", redis_connection=redis_server)
    frame = samples(settings)
    first_user = frame.groupby("user_id").event_timestamp.min()
    write_vectors(settings, "user", "iterative", 0, [(u, t, 1.0) for u, t in first_user.items()])
    write_vectors(settings, "item", "iterative", 0, [(i, frame.event_timestamp.min(), 2.0) for i in frame.item_id.unique()])
    store.apply(settings)
    store.materialize(settings)
    user = frame.user_id.iloc[0]
    got = store.online_features(settings, user, list(frame.item_id.head(2)) + ["no-such-item"], "iterative")
    assert all(np.allclose(v, 1.0) for v in got.user_knowledge_vector)
    assert np.allclose(got.item_knowledge_vector.iloc[0], 2.0) and got.item_knowledge_vector.iloc[2] is None
    import redis

    assert redis.Redis.from_url(f"redis://{redis_server}").dbsize() > 0  # the rows really are in Redis


def test_the_feast_command_line_sees_the_same_repository(ml1m, tmp_path):
    import os
    import subprocess
    from pathlib import Path

    settings = feast_settings(ml1m, tmp_path)
    env_line = subprocess.run(
        [str(Path(os.sys.executable).parent / "r4ec"), "features", "env", "--data-dir", str(tmp_path), "--dataset", "ml-1m"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    env = {**os.environ, **dict(pair.split("=", 1) for pair in env_line.removeprefix("export ").split())}
    repo = Path(__file__).resolve().parent.parent / "feature_repo"
    feast = str(Path(os.sys.executable).parent / "feast")
    applied = subprocess.run([feast, "apply"], cwd=repo, env=env, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr[-2000:]
    listed = subprocess.run([feast, "feature-views", "list"], cwd=repo, env=env, check=True, capture_output=True, text=True)
    assert {"user_profile", "item_profile", "user_history"} <= set(listed.stdout.split())
    assert (settings.feast_dir / "registry.db").is_file()


def test_the_asof_offline_store_returns_what_feasts_own_returns(feast_store):
    settings, frame, first_user = feast_store
    user = frame.user_id.iloc[0]
    write_vectors(settings, "user", "iterative", 1, [(user, first_user[user] + timedelta(days=3), 4.0)])
    stock = settings.model_copy(update={"features": settings.features.model_copy(update={"offline_store": "duckdb"})})
    assert store.repo_config(stock).offline_store.type == "duckdb"
    assert store.repo_config(settings).offline_store.type.endswith("AsofDuckDBOfflineStore")
    ours = store.training_set(settings, frame, "iterative").sort_values("sample_id").reset_index(drop=True)
    theirs = store.training_set(stock, frame, "iterative").sort_values("sample_id").reset_index(drop=True)
    assert list(ours.columns) == list(theirs.columns) and len(ours) == len(frame)
    for column in ours.columns:
        for a, b in zip(ours[column], theirs[column]):
            if isinstance(a, (list, np.ndarray)) or isinstance(b, (list, np.ndarray)):
                assert (a is None and b is None) or list(a) == list(b), column
            else:
                assert (pd.isna(a) and pd.isna(b)) or a == b, column


def test_the_registry_holds_exactly_the_runs_on_disk_and_samples_keep_their_names(ml1m, tmp_path):
    """Defect: apply never deleted, and a sampled run's views carried the full run's names, so after `r4ec demo` a
    plain `--knowledge iterative` trained on the demo's 20-entity vectors under the full run's label."""
    settings = feast_settings(ml1m, tmp_path)
    first = samples(settings).groupby("user_id").event_timestamp.min()
    sampled = settings.model_copy(update={"knowledge": settings.knowledge.model_copy(update={"limit": 3})})
    write_vectors(sampled, "user", "iterative", 0, [(u, first[u], 1.0) for u in first.index[:3]])
    write_vectors(sampled, "item", "iterative", 0, [("1", first.min(), 1.0)])
    assert store.apply(settings) == ["base", "iterative_sample3"]
    with pytest.raises(store.FeaturesError, match=r"'iterative' is not registered \(registered: base, iterative_sample3\)"):
        store.write_training_set(settings, "iterative")
    write_vectors(settings, "user", "iterative", 0, [(u, t, 2.0) for u, t in first.items()])
    write_vectors(settings, "item", "iterative", 0, [("1", first.min(), 2.0)])
    assert store.apply(settings) == ["base", "iterative", "iterative_sample3"]
    full = store.training_set(settings, samples(settings), "iterative")
    assert full.user_knowledge_vector.notna().all()  # every user: the full run, not the sample
    # a run being re-encoded is not read under its name until it is complete again
    complete = settings.knowledge_dir / "iterative" / "user_knowledge_vectors" / "_COMPLETE.json"
    marker = complete.read_text()
    complete.unlink()
    with pytest.raises(store.FeaturesError, match="not those `r4ec knowledge encode` completed"):
        store.write_training_set(settings, "iterative")
    complete.write_text(marker)
    # complete vectors beside knowledge made again since (an archive restored over a regenerated run): refused too
    part = settings.knowledge_dir / "iterative" / "user_knowledge" / "part-00000.parquet"
    encoded = part.read_bytes()
    pq.write_table(pa.table({"user_id": ["someone else"]}), part)
    with pytest.raises(store.FeaturesError, match="1 parts are not the vectors of the knowledge at .*part-00000.parquet"):
        store.write_training_set(settings, "iterative")
    part.write_bytes(encoded)
    # a run whose user and item halves were made by different models is served under no name
    manifest = settings.knowledge_dir / "iterative-sample3" / "item_knowledge" / "_manifest.json"
    manifest.write_text(manifest.read_text().replace("test-model", "other-model"))
    assert store.apply(settings) == ["base", "iterative"]
    shutil.rmtree(settings.knowledge_dir / "iterative-sample3")
    assert store.apply(settings) == ["base", "iterative"]
    views = {view.name for view in store.feature_store(settings).list_feature_views()}
    assert not any("sample" in name for name in views)
    assert {source.name for source in store.feature_store(settings).list_data_sources()} >= {"user_knowledge_iterative"}


def test_each_encoder_of_one_knowledge_run_is_served_under_its_own_name(ml1m, tmp_path):
    """Table 4: MiniLM's and another encoder's vectors of the same knowledge are two services, each reading its own."""
    settings = feast_settings(ml1m, tmp_path)
    first = samples(settings).groupby("user_id").event_timestamp.min()
    for run, fill in (("iterative", 1.0), ("iterative-enc-other", 3.0)):
        write_vectors(settings, "user", run, 0, [(u, t, fill) for u, t in first.items()])
        write_vectors(settings, "item", run, 0, [("1", first.min(), fill)])
    assert sorted(p.name for p in (settings.knowledge_dir / "iterative").iterdir()) == [
        "item_knowledge", "item_knowledge_vectors", "item_knowledge_vectors-other", "user_knowledge",
        "user_knowledge_vectors", "user_knowledge_vectors-other"]  # fmt: skip
    assert store.apply(settings) == ["base", "iterative", "iterative_enc_other"]
    for service, fill in (("iterative", 1.0), ("iterative_enc_other", 3.0)):
        frame = store.training_set(settings, samples(settings), service)
        assert {v[0] for v in frame.user_knowledge_vector} == {fill}
    (settings.knowledge_dir / "iterative" / "item_knowledge_vectors-other" / "_COMPLETE.json").unlink()
    assert store.apply(settings) == ["base", "iterative"]  # half re-encoded: not served; MiniLM's still is
