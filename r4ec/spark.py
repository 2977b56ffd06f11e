"""A Spark session configured the way every r4ec job needs it."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

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


PROGRESS_INTERVAL_S = 30.0  # a progress line this often while parts run


def run_parts(
    spark,
    task: Callable[[dict], dict],
    specs: list[dict],
    outputs: dict[Path, int],
    total: int,
    desc: str,
    progress_dir: Path | None = None,
    interval: float = PROGRESS_INTERVAL_S,
):
    """Run one Spark task per spec; each writes one file of `outputs` (path -> entities it holds), out of `total`
    entities (some may be done already). A long part shows nothing on disk until it ends, so every `interval`
    seconds the driver logs a progress line: the entities in landed files and, where tasks keep a progress record
    in `progress_dir` (`part-NNNNN.json`, named like their output), each running part's step and the tokens."""
    results: list[dict] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            results.extend(spark.sparkContext.parallelize(specs, len(specs)).map(task).collect())
        except BaseException as error:  # re-raised on the driver's thread
            failure.append(error)

    if progress_dir is not None:
        for path in outputs:  # a killed run's records are not this run's progress
            _record_path(progress_dir, path).unlink(missing_ok=True)
    thread = threading.Thread(target=work, daemon=True)
    started, seen = time.monotonic(), {}
    thread.start()
    thread.join(timeout=interval)
    while thread.is_alive():
        log.info("%s", _progress_now(desc, outputs, total, progress_dir, seen, time.monotonic() - started))
        thread.join(timeout=interval)
    if failure:
        raise failure[0]
    return results


def _record_path(progress_dir: Path, output: Path) -> Path:
    return progress_dir / f"{output.stem}.json"


def _read_record(path: Path) -> dict | None:
    """A part's progress record; None before its first write (tasks rename it into place, so it is never half)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _progress_now(
    desc: str, outputs: dict[Path, int], total: int, progress_dir: Path | None, seen: dict[Path, dict], seconds: float
) -> str:
    """The progress line now; `seen` keeps each part's latest record, as a finished part may remove its own."""
    landed = {path for path in outputs if path.exists()}
    done = total - sum(n for path, n in outputs.items() if path not in landed)
    for path in outputs if progress_dir else ():
        if record := _read_record(_record_path(progress_dir, path)):
            seen[path] = record
    running = [record for path, record in seen.items() if path not in landed]
    finished = [record for path, record in seen.items() if path in landed]
    return progress_line(desc, done, total, running, finished, seconds, initial=total - sum(outputs.values()))


def progress_line(
    desc: str, done: int, total: int, running: list[dict], finished: list[dict], seconds: float, initial: int = 0
) -> str:
    """One line of a job's progress. `running` and `finished` are the progress records of this run's parts;
    `initial` entities were done before it. The ETA counts entities per second since the start, a running part
    counting for the share of its work done where its record says (`share`)."""
    fields = [f"{desc}: {done:,}/{total:,} entities done"]
    running = sorted(running, key=lambda r: r.get("part", 0))
    if running:
        parts = ",".join(str(r.get("part", "?")) for r in running)
        steps = "; ".join(f"{r.get('step', '?')}" for r in running)
        fields.append(f"running parts {parts}: {steps}")
    generated = sum(r.get("generated_tokens", 0) for r in running + finished)
    if generated:
        prompt = sum(r.get("prompt_tokens", 0) for r in running + finished)
        rate = generated / seconds if seconds > 0 else 0.0
        fields.append(f"{generated:,} generated tokens at {rate:.1f} tokens/s (prompt {prompt:,} tokens)")
    partly = sum(r.get("entities", 0) * _share_done(r) for r in running)
    progressed = done - initial + partly
    if progressed > 0 and seconds > 0:
        fields.append(f"ETA {_duration(max(0.0, total - done - partly) * seconds / progressed)}")
    else:
        fields.append("ETA unknown")
    return "; ".join(fields)


def _share_done(record: dict) -> float:
    """The share of a running part's work done, as its task estimates it (0 where it does not say)."""
    return min(1.0, max(0.0, float(record.get("share") or 0.0)))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
