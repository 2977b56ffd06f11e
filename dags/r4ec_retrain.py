"""r4ec_retrain: train on the features as they stand, and publish only a better model.

Runs whenever new features land (the r4ec_features asset, which r4ec_build and r4ec_refresh update) or weekly:
point-in-time training sets from Feast -> train the backbones -> evaluate -> publish gate (the best new run serves
only if it beats the published run on today's validation samples).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, AssetOrTimeSchedule, task
from airflow.timetables.trigger import CronTriggerTimetable

from r4ec.pipelines.airflow import DEFAULT_ARGS, FEATURES, params, train_evaluate_publish
from r4ec.pipelines.params import RETRAIN_PARAMS

with DAG(
    dag_id="r4ec_retrain",
    description="Training sets from Feast -> train -> evaluate -> publish gate",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 1", timezone="UTC"), assets=[FEATURES]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=params(RETRAIN_PARAMS),
    tags=["r4ec"],
    doc_md=__doc__,
) as dag:

    @task(retries=0)
    def check_params(params=None) -> None:
        from r4ec.pipelines.tasks import check_params

        check_params(params)

    check_params() >> train_evaluate_publish()
