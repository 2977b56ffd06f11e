"""r4ec_build: raw data to a published ranking model, on demand.

dbt marts -> user and item knowledge (Spark) -> vectors (Spark) -> Feast apply + materialize -> train -> evaluate
-> publish, only if the new best run beats the published one on validation AUC. Trigger with a conf, e.g.
    airflow dags trigger r4ec_build -c '{"strategy": "iterative", "limit": 50, "backbones": ["lr", "din"]}'
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from r4ec.pipelines.airflow import (
    DEFAULT_ARGS,
    FEAST_POOL,
    FEATURES,
    KNOWLEDGE,
    MARTS,
    VECTORS,
    params,
    spark_job,
    train_evaluate_publish,
)
from r4ec.pipelines.params import BUILD_PARAMS

SETTINGS_ENV = "{{ ti.xcom_pull(task_ids='check_params') }}"

with DAG(
    dag_id="r4ec_build",
    description="Raw data to a published ranking model: marts, knowledge, vectors, features, training, publish gate",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=params(BUILD_PARAMS),
    render_template_as_native_obj=True,  # the Spark jobs' env_vars render to a dict
    tags=["r4ec"],
    doc_md=__doc__,
) as dag:

    @task(retries=0)
    def check_params(params=None) -> dict:
        from r4ec.pipelines.airflow import check_spark_connection
        from r4ec.pipelines.tasks import check_params

        check_spark_connection()
        return check_params(params)

    @task
    def load_data(params=None) -> str:
        from r4ec.pipelines.tasks import load_data

        return load_data(params, admit_until=params["admit_until"])

    @task(outlets=[MARTS])
    def build_marts(params=None) -> str:
        from r4ec.pipelines.tasks import build_marts

        return build_marts(params)

    def knowledge_args(entity: str) -> str:
        return f"{{{{ ['--entity', '{entity}'] + (['--overwrite'] if params.overwrite else []) }}}}"

    user_knowledge = spark_job("user_knowledge", "generate_knowledge.py", knowledge_args("user"), SETTINGS_ENV)
    item_knowledge = spark_job("item_knowledge", "generate_knowledge.py", knowledge_args("item"), SETTINGS_ENV,
                               outlets=[KNOWLEDGE])  # fmt: skip
    encode = spark_job("encode_knowledge", "encode_knowledge.py", ["--entity", "both"], SETTINGS_ENV, outlets=[VECTORS])

    @task(pool=FEAST_POOL, outlets=[FEATURES])
    def update_features(params=None) -> dict:
        from r4ec.pipelines.tasks import update_features

        return update_features(params)

    check_params() >> load_data() >> build_marts() >> user_knowledge >> item_knowledge >> encode
    encode >> update_features() >> train_evaluate_publish()
