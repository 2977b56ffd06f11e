"""The Airflow DAGs: parsed by Airflow's own DagBag, and run end to end with `dag.test()` (real Airflow metadata DB,
real spark-submit through the Spark provider, real dbt, Feast and training) on ml-100k replayed as arrivals, with
the tiny random model where knowledge quality is not the subject."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
# Airflow reads its configuration when first imported: a metadata DB of this test session's own
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="r4ec-airflow-"))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

from r4ec import layout  # noqa: E402
from r4ec.config import Settings  # noqa: E402

pytestmark = pytest.mark.integration
BASE_UNTIL = "1998-01-01T00:00:00+00:00"  # the build sees the ratings before this; the refreshes admit the rest
WEEKS = [("1998-01-01T00:00:00+00:00", "1998-01-08T00:00:00+00:00"), ("1998-01-08T00:00:00+00:00", "1998-01-15T00:00:00+00:00")]  # fmt: skip
SAMPLE = 60  # users and items with knowledge


def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def airflow_db():
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True)


def run_dag(dag_id: str, conf: dict):
    """dag.test() of the DAG as the DagBag parsed it; returns {task_id: state} and the run's state."""
    dag = dag_bag().dags[dag_id]
    run = dag.test(run_conf=conf)
    return run.state, {ti.task_id: ti.state for ti in run.get_task_instances()}


@pytest.fixture(scope="module")
def environment(tmp_path_factory, tiny_model, downloads):
    """What a worker would be configured with: the data dir, the tiny model writing 8 tokens, the Spark connection."""
    data_dir = tmp_path_factory.mktemp("airflow-data")
    (data_dir / "downloads").symlink_to(downloads, target_is_directory=True)
    variables = {
        "R4EC_DATA_DIR": str(data_dir), "R4EC_KNOWLEDGE__BACKEND": "transformers", "R4EC_KNOWLEDGE__MODEL": str(tiny_model),
        "R4EC_KNOWLEDGE__DTYPE": "float32", "R4EC_KNOWLEDGE__MAX_NEW_TOKENS": "8", "R4EC_DOWNLOAD_TIMEOUT_S": "2",
        "AIRFLOW_CONN_R4EC_SPARK": json.dumps({"conn_type": "spark", "host": "local[2]"}),
    }  # fmt: skip
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    yield Settings(knowledge={"strategy": "single", "limit": SAMPLE})
    for name, value in saved.items():
        os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


BUILD_CONF = {"strategy": "single", "limit": SAMPLE, "backbones": ["lr", "din"], "epochs": 1, "admit_until": BASE_UNTIL}


def outputs(settings: Settings) -> dict:
    """Row counts of what a build leaves, and the run that serves."""
    from r4ec.ranking.runs import published

    def rows(folder: Path) -> int:
        return duckdb.sql(f"select count(*) from read_parquet('{folder}/part-*.parquet')").fetchall()[0][0]

    record = published(settings)
    return {
        **{f"{e}_knowledge": rows(layout.knowledge_dir(settings, e)) for e in layout.ENTITIES},
        **{f"{e}_vectors": rows(layout.vectors_dir(settings, e)) for e in layout.ENTITIES},
        "samples": duckdb.sql(f"select count(*) from '{layout.mart_path(settings, 'ctr_samples')}'").fetchall()[0][0],
        "training_rows": duckdb.sql(f"select count(*) from '{layout.training_set_path(settings, 'single_sample60')}'").fetchall()[0][0],
        "published": (record["run"], record["digest"]),
        "publishes": len(layout.publish_history_path(settings).read_text().splitlines()),
    }  # fmt: skip


@pytest.fixture(scope="module")
def built(airflow_db, environment):
    state, tasks = run_dag("r4ec_build", BUILD_CONF)
    assert state == "success", tasks
    return environment, outputs(environment)


@pytest.fixture(scope="module")
def rebuilt(built):
    settings, _ = built
    state, tasks = run_dag("r4ec_build", BUILD_CONF)
    assert state == "success", tasks
    return outputs(settings)


@pytest.fixture(scope="module")
def refreshed(rebuilt, built):
    """Two consecutive weeks replayed through r4ec_refresh; the knowledge rows before them, per entity."""
    settings, _ = built
    before = {e: duckdb.sql(f"select count(*) from read_parquet('{layout.knowledge_dir(settings, e)}/part-*.parquet')").fetchall()[0][0]
              for e in layout.ENTITIES}  # fmt: skip
    for start, end in WEEKS:
        state, tasks = run_dag("r4ec_refresh", {"strategy": "single", "limit": SAMPLE, "start": start, "end": end, "replay": True})
        assert state == "success", tasks
    return settings, before


# ---- the DagBag ------------------------------------------------------------------------------------------------------


def test_the_dags_parse_with_the_expected_graphs_and_assets():
    bag = dag_bag()
    assert bag.import_errors == {}
    assert set(bag.dags) == {"r4ec_build", "r4ec_refresh", "r4ec_retrain"}
    edges = {d: {(t.task_id, n) for t in bag.dags[d].tasks for n in t.downstream_task_ids} for d in bag.dags}
    chain = ["check_params", "load_data", "build_marts", "user_knowledge", "item_knowledge", "encode_knowledge",
             "update_features", "train", "evaluate", "publish"]  # fmt: skip
    assert edges["r4ec_build"] == set(zip(chain, chain[1:]))
    refresh = ["admit_interactions", "build_marts", "refresh_user_knowledge", "refresh_item_knowledge",
               "encode_knowledge", "materialize"]  # fmt: skip
    assert edges["r4ec_refresh"] == set(zip(refresh, refresh[1:])) | {("refresh_window", "admit_interactions"),
                                                                       ("refresh_window", "build_marts")}  # fmt: skip
    assert edges["r4ec_retrain"] == {("check_params", "train"), ("train", "evaluate"), ("evaluate", "publish")}
    outlets = {(d, t.task_id): [a.name for a in t.outlets] for d in bag.dags for t in bag.dags[d].tasks if t.outlets}
    assert outlets == {
        ("r4ec_build", "build_marts"): ["r4ec_marts"], ("r4ec_build", "item_knowledge"): ["r4ec_knowledge"],
        ("r4ec_build", "encode_knowledge"): ["r4ec_knowledge_vectors"], ("r4ec_build", "update_features"): ["r4ec_features"],
        ("r4ec_build", "publish"): ["r4ec_model"],
        ("r4ec_refresh", "build_marts"): ["r4ec_marts"], ("r4ec_refresh", "refresh_item_knowledge"): ["r4ec_knowledge"],
        ("r4ec_refresh", "encode_knowledge"): ["r4ec_knowledge_vectors"], ("r4ec_refresh", "materialize"): ["r4ec_features"],
        ("r4ec_retrain", "publish"): ["r4ec_model"],
    }  # fmt: skip
    feast_tasks = {(d, t.task_id) for d in bag.dags for t in bag.dags[d].tasks if t.pool == "r4ec_feast"}
    assert feast_tasks == {("r4ec_build", "update_features"), ("r4ec_build", "publish"), ("r4ec_refresh", "materialize"),
                           ("r4ec_retrain", "publish")}  # fmt: skip
    assert "r4ec_features" in repr(bag.dags["r4ec_retrain"].timetable)  # retrain runs when new features land
    assert bag.dags["r4ec_refresh"].timetable.__class__.__name__ == "CronDataIntervalTimetable"  # runs have intervals
    spark = [t for d in bag.dags.values() for t in d.tasks if t.task_type == "SparkSubmitOperator"]
    assert len(spark) == 6 and all(t.retries == 2 and t.retry_exponential_backoff for t in spark)


def test_parsing_the_dags_imports_neither_feast_nor_torch():
    """A DAG file is parsed every few seconds: the heavy imports belong inside the tasks."""
    code = ("import sys; from airflow.dag_processing.dagbag import DagBag; DagBag(dag_folder=sys.argv[1]); "
            "print(sorted(m for m in ('feast', 'torch', 'pyspark', 'dbt') if m in sys.modules))")  # fmt: skip
    found = subprocess.run([sys.executable, "-c", code, str(DAGS)], capture_output=True, text=True, check=True)
    assert found.stdout.strip().splitlines()[-1] == "[]"


# ---- dag.test() ------------------------------------------------------------------------------------------------------


def test_build_runs_end_to_end_and_publishes(built):
    from r4ec.features.store import online_features
    from r4ec.ranking.runs import load_run, published

    settings, counts = built
    assert counts["user_knowledge"] == counts["user_vectors"] == SAMPLE
    assert counts["item_knowledge"] == counts["item_vectors"] == SAMPLE
    record = published(settings)
    assert record["run"] in {"lr-none-mlp-seed42", "din-none-mlp-seed42", "din-single-sample60-mlp-seed42"}
    assert load_run(Path(record["path"])).digest == record["digest"]
    user = duckdb.sql(f"select user_id from read_parquet('{layout.vectors_dir(settings, 'user')}/*.parquet') limit 1").fetchall()[0][0]
    online = online_features(settings, user, ["1"], "single_sample60")
    assert online["user_knowledge_vector"].notna().all()  # materialized into the online store


def test_building_twice_changes_nothing(built, rebuilt):
    _, first = built
    assert rebuilt == first  # same rows, the same published run, no second publish


def test_refresh_adds_rows_only_for_what_the_interval_changed(refreshed):
    settings, before = refreshed
    raw = settings.raw_dir / "ratings.parquet"
    for entity in layout.ENTITIES:
        folder = layout.knowledge_dir(settings, entity)
        sample = {r[0] for r in duckdb.sql(f"select {entity}_id from read_parquet('{folder}/part-0*.parquet')").fetchall()}
        total = duckdb.sql(f"select count(*) from read_parquet('{folder}/part-*.parquet')").fetchall()[0][0]
        added = 0
        for start, end in WEEKS:
            tag = layout.refresh_tag(datetime.fromisoformat(end))
            files = [str(p) for p in folder.glob(layout.part_name_glob(tag))]  # none where nothing changed
            rows = duckdb.sql(f"select {entity}_id, event_timestamp from read_parquet({files})").fetchall() if files else []
            assert all(when == datetime.fromisoformat(end) for _, when in rows)
            assert {key for key, _ in rows} == expected_refresh(raw, entity, start, end) & sample
            added += len(rows)
        assert added > 0 and total == before[entity] + added


def expected_refresh(raw: Path, entity: str, start: str, end: str) -> set[str]:
    """From the raw ratings alone: users who rated in [start, end); items whose first liker (rating > 3) or first
    disliker came in [start, end) (day-aligned bounds, so the marts' day ordering agrees)."""
    s, e = (int(datetime.fromisoformat(t).timestamp()) for t in (start, end))
    if entity == "user":
        query = f"select distinct user_id from '{raw}' where timestamp >= {s} and timestamp < {e}"
    else:
        query = (f"select item_id from '{raw}' where timestamp < {e} group by item_id, rating > 3 "
                 f"having min(timestamp) >= {s}")  # fmt: skip
    return {row[0] for row in duckdb.sql(query).fetchall()}


def test_point_in_time_samples_before_a_refresh_keep_the_old_knowledge(refreshed):
    from r4ec.features.store import write_training_set

    settings, _ = refreshed
    _, frame = write_training_set(settings, "single_sample60")
    vectors = duckdb.sql(f"select user_id, event_timestamp, vector from read_parquet('{layout.vectors_dir(settings, 'user')}/*.parquet')").df()
    end = datetime.fromisoformat(WEEKS[0][1])
    refreshed_users = set(vectors[vectors.event_timestamp == end].user_id)
    frame = frame[frame.user_id.isin(refreshed_users)]
    checked = {"before": 0, "after": 0}
    for row in frame.itertuples():
        history = vectors[(vectors.user_id == row.user_id) & (vectors.event_timestamp <= row.event_timestamp)]
        expected = history.sort_values("event_timestamp").iloc[-1]
        assert list(row.user_knowledge_vector) == pytest.approx(list(expected.vector))
        if row.event_timestamp < end:
            assert expected.event_timestamp < end
            checked["before"] += 1
        else:
            assert expected.event_timestamp >= end
            checked["after"] += 1
    assert checked["before"] > 0 and checked["after"] > 0


def test_a_bad_parameter_fails_the_run_before_any_work(airflow_db, environment):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError, match="limit"):
        run_dag("r4ec_build", {"limit": 0})
    state, tasks = run_dag("r4ec_refresh", {"start": "1998-01-08T00:00:00+00:00", "end": "1998-01-01T00:00:00+00:00"})
    assert state == "failed"
    assert tasks["refresh_window"] == "failed"
    assert {t for t, s in tasks.items() if s == "success"} == set()


def test_a_scheduled_refresh_takes_its_data_interval(environment):
    from r4ec.pipelines import PipelineError
    from r4ec.pipelines.tasks import refresh_window

    window = refresh_window({}, datetime(1998, 1, 1, tzinfo=UTC), datetime(1998, 1, 2, tzinfo=UTC))
    assert (window["start"], window["end"]) == ("1998-01-01T00:00:00+00:00", "1998-01-02T00:00:00+00:00")
    assert window["env"]["R4EC_REFRESH_END"] == "1998-01-02T00:00:00+00:00"
    with pytest.raises(PipelineError, match="give both 'start' and 'end'"):
        refresh_window({}, None, None)
