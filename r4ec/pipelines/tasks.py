"""One function per DAG task. Each takes the run's parameters, does one r4ec step, logs what it did and returns
what the next task or the run's record needs (JSON, for XCom). Heavy imports stay inside the functions."""

from __future__ import annotations

import json
import logging
from datetime import datetime

from r4ec import layout
from r4ec.config import as_utc
from r4ec.pipelines import PipelineError
from r4ec.pipelines.params import settings_of, spark_env

log = logging.getLogger(__name__)


def check_params(params: dict) -> dict[str, str]:
    """Fail the run's first task on a bad parameter; return the environment the Spark jobs run with."""
    settings = settings_of(params)
    log.info("run settings: dataset %s, protocol %s, knowledge run %s (%s, model %s), data in %s", settings.dataset,
             settings.protocol, layout.KnowledgeRun.of(settings).folder, settings.knowledge.backend,
             settings.knowledge.model, settings.data_dir.resolve())  # fmt: skip
    return spark_env(params)


def refresh_window(params: dict, interval_start: datetime | None, interval_end: datetime | None) -> dict:
    """The interval [start, end) to refresh: the run's parameters, else its data interval (a manual or
    asset-triggered run may have none: then the parameters must say). Returns ISO times and the Spark environment."""
    start = params.get("start") or interval_start
    end = params.get("end") or interval_end
    if start is None or end is None:
        raise PipelineError("no refresh interval: this run has no data interval, so give both 'start' and 'end'")
    start, end = (as_utc(datetime.fromisoformat(t) if isinstance(t, str) else t) for t in (start, end))
    settings = settings_of(params, refresh_start=start, refresh_end=end)  # checks start < end
    window = {"start": settings.refresh_start.isoformat(), "end": settings.refresh_end.isoformat()}
    log.info("refresh interval %s to %s", window["start"], window["end"])
    return {**window, "env": spark_env(params, refresh_start=start, refresh_end=end)}


def load_data(params: dict, admit_until: str | None = None) -> str:
    from r4ec.data import load_dataset

    line = load_dataset(settings_of(params, **({"admit_until": admit_until} if admit_until else {}))).line()
    log.info("%s", line)
    return line


def build_marts(params: dict, refresh: dict | None = None) -> str:
    from r4ec.marts import build_marts as build

    window = {"refresh_start": refresh["start"], "refresh_end": refresh["end"]} if refresh else {}
    line = build(settings_of(params, **window)).line()
    log.info("%s", line)
    return line


def update_features(params: dict) -> dict:
    """Feast apply and materialize (the DAGs run this in a pool of one: the file registry takes one writer)."""
    from r4ec.features.store import apply, materialize

    settings = settings_of(params)
    services = apply(settings)
    loaded = materialize(settings)
    log.info("feast: services %s; materialized %s", ", ".join(services),
             ", ".join(f"{view} ({n} new files)" for view, n in loaded.items()) or "nothing new")  # fmt: skip
    return {"services": services, "materialized": loaded}


def train(params: dict) -> list[str]:
    """Train the backbones on base features and, where the knowledge run is registered, on it; finished runs of the
    same training set are skipped. Returns the run names."""
    import torch

    from r4ec.features.store import feature_store
    from r4ec.ranking.experiment import run_experiments, train_configs

    settings = settings_of(params)
    run = layout.KnowledgeRun.of(settings)
    service = run.service
    services = [s.name for s in feature_store(settings).list_feature_services()]  # as update_features registered
    kinds = ["none", run.name] if service in services else ["none"]
    if service not in services:
        log.warning("knowledge run %s is not registered (not encoded, or features not updated since): training on "
                    "base features only", service)  # fmt: skip
    configs = train_configs(settings, params.get("backbones") or ["lr", "din"], kinds, params.get("seeds"),
                            epochs=params.get("epochs"))  # fmt: skip
    torch.set_num_threads(1)
    runs = [run.name for run in run_experiments(settings, configs)]
    log.info("trained or found %d runs: %s", len(runs), ", ".join(runs))
    return runs


def evaluate(params: dict, runs: list[str]) -> dict:
    """Validation and test metrics of the runs, and the best by validation AUC (test is reported, never chosen by)."""
    from r4ec.ranking.report import write_dataset_report

    settings = settings_of(params)
    metrics = {run: json.loads((settings.artifacts_dir / run / "metrics.json").read_text()) for run in runs}
    for run, m in metrics.items():
        log.info("%s: valid AUC %.4f, test AUC %.4f, test LogLoss %.4f", run, m["valid"]["auc"], m["test"]["auc"],
                 m["test"]["logloss"])  # fmt: skip
    best = max(runs, key=lambda run: metrics[run]["valid"]["auc"])
    report = write_dataset_report(settings)
    log.info("best by valid AUC: %s; Table 2 of %d runs at %s", best, report.runs, report.markdown_path)
    return {"best": best, "valid_auc": metrics[best]["valid"]["auc"], "test_auc": metrics[best]["test"]["auc"]}


def publish_gate(params: dict, best: str) -> dict:
    """Publish the best run only if it beats the published one on today's validation samples."""
    from r4ec.ranking.runs import publish_if_better, published

    settings = settings_of(params)
    gate = publish_if_better(settings, best)
    log.info("%s", gate.line())
    return {"published": gate.published, "serving": published(settings)["run"], "line": gate.line()}
