"""The Airflow pieces the three DAGs share: assets, task defaults, the Feast pool and the Spark job operator.

Only the DAG files import this module (it imports Airflow); the work itself is in r4ec.pipelines.tasks.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, Param, task

REPO = Path(__file__).resolve().parents[2]
SPARK_JOBS = REPO / "spark_jobs"
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"  # pyspark's, beside this Python
SPARK_CONNECTION = "r4ec_spark"  # e.g. AIRFLOW_CONN_R4EC_SPARK='{"conn_type": "spark", "host": "local[2]"}'
FEAST_POOL = "r4ec_feast"  # one slot: Feast's file registry takes one writer at a time

# what the stages hand over; a downstream DAG can be scheduled on any of them
MARTS = Asset("r4ec_marts")
KNOWLEDGE = Asset("r4ec_knowledge")
VECTORS = Asset("r4ec_knowledge_vectors")
FEATURES = Asset("r4ec_features")
MODEL = Asset("r4ec_model")

DEFAULT_ARGS = {
    "owner": "r4ec",
    "retries": 2,  # steps that can fail transiently (a Spark worker, a busy file); each step resumes its own work
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


def check_spark_connection() -> None:
    """A run's first task fails on a missing Spark connection (spark-submit would otherwise fall back to YARN)."""
    from airflow.sdk import BaseHook

    from r4ec.pipelines import PipelineError

    try:
        BaseHook.get_connection(SPARK_CONNECTION)
    except Exception as error:  # the SDK raises its own not-found type
        raise PipelineError(
            f"no Airflow connection '{SPARK_CONNECTION}' for the Spark jobs: set, e.g., "
            f"AIRFLOW_CONN_{SPARK_CONNECTION.upper()}='{{\"conn_type\": \"spark\", \"host\": \"local[2]\"}}' ({error})"
        ) from None


def params(spec: dict[str, tuple[object, dict, str]]) -> dict[str, Param]:
    """Airflow Params from r4ec.pipelines.params' (default, JSON schema, description) table."""
    return {name: Param(default, description=text, **schema) for name, (default, schema, text) in spec.items()}


def spark_job(task_id: str, script: str, arguments: list[str] | str, env: str, **kwargs) -> SparkSubmitOperator:
    """One r4ec Spark job submitted with spark-submit; `env` is a template that renders to the job's environment
    (R4EC_* settings of the run), so the job builds the same Settings as the Python tasks. `arguments` may be a
    template that renders to the list (the DAGs render templates as native objects)."""
    return SparkSubmitOperator(
        task_id=task_id,
        application=str(SPARK_JOBS / script),
        application_args=arguments,
        conn_id=SPARK_CONNECTION,
        spark_binary=str(SPARK_SUBMIT),
        name=f"r4ec-{task_id}",
        conf={"spark.ui.enabled": "false"},
        env_vars=env,
        **kwargs,
    )


def train_evaluate_publish():
    """The tasks r4ec_build and r4ec_retrain end with, inside the DAG being defined: train -> evaluate -> publish
    (only if better). Returns the train task, for the caller to put after its own."""

    @task
    def train(params=None) -> list[str]:
        from r4ec.pipelines.tasks import train

        return train(params)

    @task
    def evaluate(runs: list[str], params=None) -> dict:
        from r4ec.pipelines.tasks import evaluate

        return evaluate(params, runs)

    @task(pool=FEAST_POOL, outlets=[MODEL])
    def publish(best: dict, params=None) -> dict:
        from r4ec.pipelines.tasks import publish_gate

        return publish_gate(params, best["best"])

    runs = train()
    publish(evaluate(runs))
    return runs
