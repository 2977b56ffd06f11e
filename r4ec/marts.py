"""Build the dbt marts (staging -> intermediate -> marts, exported as parquet) and summarise what they hold."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from r4ec.config import Settings
from r4ec.console import prints_to_log

log = logging.getLogger(__name__)

MARTS = ("ctr_samples", "user_history", "user_profile", "item_profile", "user_prompt_inputs", "item_prompt_inputs",
         "marts_settings")  # fmt: skip


class MartsError(Exception):
    """dbt failed: a model did not build or a data test found rows."""


@dataclass
class MartsSummary:
    marts_dir: Path
    seconds: float
    splits: dict[str, tuple[int, float]]  # split -> (samples, positive ratio)

    @property
    def samples(self) -> int:
        return sum(count for count, _ in self.splits.values())

    def line(self) -> str:
        per_split = ", ".join(f"{name} {count:,} ({ratio:.1%} positive)" for name, (count, ratio) in self.splits.items())
        return f"ctr_samples: {self.samples:,} rows: {per_split}; marts in {self.marts_dir} (dbt build {self.seconds:.1f}s)"


def dbt_args(settings: Settings, command: str, *extra: str) -> list[str]:
    """Arguments of a dbt invocation; target and logs go under data_dir so the repository stays clean."""
    work = settings.warehouse_path.parent / f"dbt-{settings.dataset}"
    return [
        command,
        "--project-dir", str(settings.dbt_project_dir),
        "--profiles-dir", str(settings.dbt_project_dir),
        "--target-path", str(work / "target"),
        "--log-path", str(work / "logs"),
        "--vars", json.dumps(settings.dbt_vars()),
        *extra,
    ]  # fmt: skip


def hand_run_env(settings: Settings) -> dict[str, object]:
    """The variables a hand-run `dbt build` in dbt/ needs to do what `r4ec marts build` does (for `eval`): the
    warehouse, threads, target and log folders under DATA_DIR, and the vars as R4EC_DBT_VARS."""
    given = dbt_args(settings, "build")
    option = {name: given[given.index(name) + 1] for name in ("--target-path", "--log-path", "--vars")}
    for path in (settings.warehouse_path.parent, settings.marts_dir):
        path.mkdir(parents=True, exist_ok=True)
    return {
        "R4EC_WAREHOUSE_PATH": settings.warehouse_path,
        "R4EC_DBT_THREADS": settings.dbt_threads,
        "DBT_TARGET_PATH": option["--target-path"],
        "DBT_LOG_PATH": option["--log-path"],
        "R4EC_DBT_VARS": option["--vars"],
    }


def run_dbt(settings: Settings, command: str, *extra: str) -> None:
    from dbt.cli.main import dbtRunner

    for path in (settings.warehouse_path.parent, settings.marts_dir):
        path.mkdir(parents=True, exist_ok=True)
    os.environ["R4EC_WAREHOUSE_PATH"] = str(settings.warehouse_path)
    os.environ["R4EC_DBT_THREADS"] = str(settings.dbt_threads)
    with prints_to_log("dbt"):  # its console lines; stdout holds r4ec's summary
        result = dbtRunner().invoke(dbt_args(settings, command, *extra))
    if result.exception is not None:
        raise MartsError(f"dbt {command} could not run: {result.exception}")
    if not result.success:
        failed = [
            f"{r.node.name} ({r.status}{': ' + str(r.failures) + ' rows' if r.failures else ''})"
            for r in (result.result or [])
            if str(r.status) in ("error", "fail")
        ]
        raise MartsError(f"dbt {command} failed: {', '.join(failed) or 'see the dbt log'}")


def split_counts(marts_dir: Path) -> dict[str, tuple[int, float]]:
    rows = duckdb.sql(
        f"""
        select split, count(*), avg(label)
        from read_parquet('{marts_dir / "ctr_samples.parquet"}')
        group by split
        order by case split when 'train' then 0 when 'valid' then 1 else 2 end
        """
    ).fetchall()
    return {split: (count, ratio) for split, count, ratio in rows}


def built_with(marts_dir: Path) -> dict[str, object] | None:
    """The protocol settings the marts in `marts_dir` were built with (the marts_settings mart); None where that
    mart is missing (no marts, or marts built before it existed)."""
    path = marts_dir / "marts_settings.parquet"
    if not path.is_file():
        return None
    relation = duckdb.sql(f"from read_parquet('{path}')")
    return dict(zip(relation.columns, relation.fetchall()[0]))


def build_marts(settings: Settings, select: str | None = None) -> MartsSummary:
    """`dbt build` (models, unit tests and data tests) on the raw tables of `settings.dataset`."""
    raw = settings.raw_dir / "ratings.parquet"
    if not raw.is_file():
        raise MartsError(f"{raw} not found: run `r4ec data load` first")
    started = time.perf_counter()
    # with a selection, run only the data tests whose every parent is selected
    run_dbt(settings, "build", *(["--select", select, "--indirect-selection", "cautious"] if select else []))
    return MartsSummary(settings.marts_dir, time.perf_counter() - started, split_counts(settings.marts_dir))
