"""A Spark session configured the way every r4ec job needs it."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)


def spark_session(master: str, app_name: str):
    """Under spark-submit, the master it chose (`--master`, else spark-defaults.conf, else its local[*]) wins: its
    JVM already holds `spark.master`, and a master set here would override it. Otherwise r4ec starts Spark itself,
    on `master` (the spark_master setting). Workers run this same Python, so they can import r4ec."""
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit started the JVM before our code ran
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder if submitted else SparkSession.builder.master(master)
    spark = (
        builder.appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.python.worker.reuse", "true")  # keep loaded models between tasks
        .config("spark.task.maxFailures", "1")  # a failed part fails the job; a re-run resumes it
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    chosen = "chosen by spark-submit" if submitted else "the spark_master setting"
    log.info("spark master: %s (%s)", spark.sparkContext.master, chosen)
    return spark


def run_parts(spark, task: Callable[[dict], dict], specs: list[dict], outputs: dict[Path, int], total: int, desc: str):
    """Run one Spark task per spec; each writes one file of `outputs` (path -> entities it holds). The driver
    shows a progress bar over the files landing on disk, out of `total` entities (some may be done already)."""
    results: list[dict] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            results.extend(spark.sparkContext.parallelize(specs, len(specs)).map(task).collect())
        except BaseException as error:  # re-raised on the driver's thread
            failure.append(error)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    pending = dict(outputs)
    with tqdm(total=total, initial=total - sum(pending.values()), desc=desc, unit=" entities") as bar:
        while pending:
            for path in [p for p in pending if p.exists()]:
                bar.update(pending.pop(path))
            if not thread.is_alive():
                break
            thread.join(timeout=1.0)
    thread.join()
    if failure:
        raise failure[0]
    return results
