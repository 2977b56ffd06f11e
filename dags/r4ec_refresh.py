"""r4ec_refresh: keep knowledge fresh as interactions arrive, daily.

For the run's data interval [start, end) (or `start` / `end` from the conf): admit the new ratings, rebuild the marts
with the interval's refresh marts, regenerate knowledge only for the users with new ratings and the items that
gained their first liker or disliker, stamped with `end` (Spark), encode the new parts (Spark), materialize.
Point-in-time retrieval then gives a sample before `end` the old knowledge and one after it the new. To replay
ml-100k week by week:
    airflow dags trigger r4ec_refresh -c '{"start": "1998-01-01", "end": "1998-01-08", "replay": true}'
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task
from airflow.timetables.interval import CronDataIntervalTimetable

from r4ec.pipelines.airflow import DEFAULT_ARGS, FEAST_POOL, FEATURES, KNOWLEDGE, MARTS, VECTORS, params, spark_job
from r4ec.pipelines.params import REFRESH_PARAMS

WINDOW_ENV = "{{ ti.xcom_pull(task_ids='refresh_window')['env'] }}"

with DAG(
    dag_id="r4ec_refresh",
    description="Regenerate knowledge for the users and items an interval changed, stamped with its end",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),  # daily runs, each with its day as interval
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # intervals in order: each builds on the knowledge of the last
    default_args=DEFAULT_ARGS,
    params=params(REFRESH_PARAMS),
    render_template_as_native_obj=True,
    tags=["r4ec"],
    doc_md=__doc__,
) as dag:

    @task(retries=0)
    def refresh_window(params=None, data_interval_start=None, data_interval_end=None) -> dict:
        from r4ec.pipelines.airflow import check_spark_connection
        from r4ec.pipelines.tasks import refresh_window

        check_spark_connection()
        return refresh_window(params, data_interval_start, data_interval_end)

    @task
    def admit_interactions(window: dict, params=None) -> str:
        from r4ec.pipelines.tasks import load_data

        return load_data(params, admit_until=window["end"] if params["replay"] else None)

    @task(outlets=[MARTS])
    def build_marts(window: dict, params=None) -> str:
        from r4ec.pipelines.tasks import build_marts

        return build_marts(params, refresh=window)

    window = refresh_window()
    users = spark_job("refresh_user_knowledge", "refresh_knowledge.py", ["--entity", "user"], WINDOW_ENV)
    items = spark_job("refresh_item_knowledge", "refresh_knowledge.py", ["--entity", "item"], WINDOW_ENV,
                      outlets=[KNOWLEDGE])  # fmt: skip
    encode = spark_job("encode_knowledge", "encode_knowledge.py", ["--entity", "both"], WINDOW_ENV, outlets=[VECTORS])

    @task(pool=FEAST_POOL, outlets=[FEATURES])
    def materialize(params=None) -> dict:
        from r4ec.pipelines.tasks import update_features

        return update_features(params)

    admit_interactions(window) >> build_marts(window) >> users >> items >> encode >> materialize()
