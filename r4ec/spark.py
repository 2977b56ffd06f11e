"""A Spark session configured the way every r4ec job needs it."""

from __future__ import annotations

import os
import sys


def spark_session(master: str, app_name: str):
    """Local by default; any master by configuration. Workers run this same Python, so they can import r4ec."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.python.worker.reuse", "true")  # keep loaded models between tasks
        .config("spark.task.maxFailures", "1")  # a failed part fails the job; a re-run resumes it
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark
