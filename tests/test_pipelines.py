"""What the DAGs run, without Airflow: parameters to Settings and to the Spark jobs' environment, the replay cut,
refresh intervals, and the refresh step's refusals (tests/test_dags.py runs it all under Airflow)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from r4ec import layout
from r4ec.config import Settings
from r4ec.data import load_dataset
from r4ec.knowledge import KnowledgeError
from r4ec.knowledge.job import manifest, refresh_knowledge
from r4ec.pipelines import PipelineError
from r4ec.pipelines.params import BUILD_PARAMS, REFRESH_PARAMS, overrides, settings_of, spark_env


def test_null_parameters_leave_the_configuration_and_the_rest_override_it(monkeypatch):
    monkeypatch.setenv("R4EC_KNOWLEDGE__ROUNDS", "2")
    params = {name: default for name, (default, _, _) in BUILD_PARAMS.items()}
    settings = settings_of({**params, "strategy": "single", "limit": 5})
    assert (settings.knowledge.strategy, settings.knowledge.limit, settings.knowledge.rounds) == ("single", 5, 2)
    assert overrides({"dataset": "ml-1m", "model": "m", "rounds": None}) == {"dataset": "ml-1m", "knowledge": {"model": "m"}}


def test_a_bad_parameter_is_one_line_naming_it():
    with pytest.raises(PipelineError, match=r"^bad parameters: knowledge.limit: Input should be greater than or equal to 1$"):
        settings_of({"limit": 0})
    with pytest.raises(PipelineError, match="unknown parameters: colour"):
        settings_of({"colour": "red"})


def test_the_spark_jobs_get_the_same_settings_as_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("R4EC_DATA_DIR", str(tmp_path))
    env = spark_env({"strategy": "filter", "limit": 7, "dataset": "ml-100k", "encoder": "/m/all-mpnet-base-v2"},
                    refresh_start=datetime(1998, 1, 1, tzinfo=UTC), refresh_end=datetime(1998, 1, 8, tzinfo=UTC))  # fmt: skip
    assert env["R4EC_KNOWLEDGE__STRATEGY"] == "filter" and env["R4EC_KNOWLEDGE__LIMIT"] == "7"
    assert env["R4EC_REFRESH_END"] == "1998-01-08T00:00:00+00:00" and env["PYSPARK_PYTHON"] == sys.executable
    for name, value in env.items():  # what a job started with exactly these variables would build
        monkeypatch.setenv(name, value)
    rebuilt = Settings()
    assert (rebuilt.data_dir, rebuilt.knowledge.strategy, rebuilt.knowledge.limit) == (tmp_path, "filter", 7)
    assert layout.KnowledgeRun.of(rebuilt).folder == "filter-enc-allmpnetbasev2-sample7"  # the DAG's run is the encoder's own
    assert rebuilt.refresh_end == datetime(1998, 1, 8, tzinfo=UTC)


def test_refresh_parameters_are_a_schema_airflow_can_check():
    import jsonschema

    for default, schema, text in REFRESH_PARAMS.values():
        jsonschema.validate(default, schema)  # every default satisfies its own schema
        assert text
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(0, REFRESH_PARAMS["limit"][1])


def test_a_refresh_interval_is_both_ends_in_order_and_in_utc():
    window = Settings(refresh_start="1998-01-01", refresh_end="1998-01-08T02:00:00+02:00")
    assert window.refresh_end == datetime(1998, 1, 8, tzinfo=UTC)
    assert window.dbt_vars()["refresh_end"] == "1998-01-08 00:00:00.000000"
    assert Settings().dbt_vars()["refresh_start"] is None
    with pytest.raises(ValidationError, match="go together"):
        Settings(refresh_end="1998-01-08")
    with pytest.raises(ValidationError, match="is not before"):
        Settings(refresh_start="1998-01-08", refresh_end="1998-01-08")


def test_refresh_parts_are_named_after_the_interval_end_and_apart_from_the_run_parts(tmp_path):
    tag = layout.refresh_tag(datetime(1998, 1, 8, tzinfo=UTC))
    assert layout.part_name(3, tag) == "part-asof19980108T000000-00003.parquet"
    for name in (layout.part_name(0), layout.part_name(3, tag)):
        (tmp_path / name).touch()
    assert [p.name for p in tmp_path.glob(layout.part_name_glob())] == ["part-00000.parquet"]
    assert [p.name for p in tmp_path.glob(layout.part_name_glob(tag))] == ["part-asof19980108T000000-00003.parquet"]
    assert len(list(tmp_path.glob("part-*.parquet"))) == 2  # Feast and the encoder read both


def test_admit_until_keeps_only_the_earlier_ratings(ml1m, ml1m_files, tmp_path):
    everything = pq.read_table(ml1m.raw_dir / "ratings.parquet")
    cut = sorted(everything.column("timestamp").to_pylist())[len(everything) // 2]
    until = datetime.fromtimestamp(cut, UTC)
    summary = load_dataset(Settings(data_dir=tmp_path, dataset="ml-1m", source_path=ml1m_files[0], admit_until=until))
    admitted = pq.read_table(summary.out_dir / "ratings.parquet")
    assert admitted.num_rows == sum(t < cut for t in everything.column("timestamp").to_pylist()) == summary.counts["ratings"]
    assert f"admitted {admitted.num_rows:,} of {everything.num_rows:,} ratings" in summary.line()
    assert pq.read_table(summary.out_dir / "items.parquet").num_rows == pq.read_table(ml1m.raw_dir / "items.parquet").num_rows


def test_a_refresh_needs_its_interval_a_run_and_marts_built_for_that_interval(ml1m, tmp_path):
    import shutil

    shutil.copytree(ml1m.marts_dir, tmp_path / "marts" / "ml-1m")
    window = {"refresh_start": "2000-12-01", "refresh_end": "2000-12-08"}
    settings = Settings(data_dir=tmp_path, dataset="ml-1m", knowledge={"strategy": "single"}, **window)
    with pytest.raises(KnowledgeError, match="needs its interval"):
        refresh_knowledge(settings.model_copy(update={"refresh_start": None, "refresh_end": None}), "user")
    with pytest.raises(KnowledgeError, match="no knowledge run to refresh"):
        refresh_knowledge(settings, "user")
    run = layout.knowledge_dir(settings, "user")
    run.mkdir(parents=True)
    (run / layout.MANIFEST).write_text(json.dumps(manifest(settings, "user", "inputs", 1)))
    with pytest.raises(KnowledgeError, match="hold no refresh interval: run `r4ec marts build --refresh-start 2000-12-01"):
        refresh_knowledge(settings, "user")  # the copied marts were built outside a refresh
    other = settings.model_copy(update={"knowledge": settings.knowledge.model_copy(update={"rounds": 3})})
    with pytest.raises(KnowledgeError, match=r"generated with other settings \(rounds\)"):
        refresh_knowledge(other, "user")
