"""What the Airflow DAGs in dags/ run: their parameters and one function per task, free of Airflow.

The DAG files only wire these together (and Spark jobs through the Spark provider), so every task can also run from
a test or a shell, and a scheduler is never needed to see what a task does.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A DAG run cannot go on (a bad parameter, a missing interval); one line for the task log."""
