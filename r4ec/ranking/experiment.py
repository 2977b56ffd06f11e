"""Training runs on training sets from Feast: each feature service's set is retrieved (or reused while it is newer
than everything it was built from), turned into tensors by `train`, and each finished run is saved under
DATA_DIR/models/artifacts/DATASET/<run>/. A sweep that dies resumes: finished runs are skipped."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from r4ec.config import Settings
from r4ec.ranking.train import TrainConfig, save, train

log = logging.getLogger(__name__)


def training_table(settings: Settings, service: str, rebuild: bool = False) -> tuple[pa.Table, Path]:
    """The point-in-time training set of every CTR sample from `service`, rebuilt through Feast when it is missing
    or older than the CTR samples or any source file of the service's views."""
    from r4ec.features.store import service_sources, training_set_path, write_training_set

    path = training_set_path(settings, service)
    sources = service_sources(settings, service)
    newest = max(source.stat().st_mtime_ns for source in sources)
    if rebuild or not path.exists() or path.stat().st_mtime_ns < newest:
        log.info("training set '%s': retrieving from Feast (%d source files)", service, len(sources))
        write_training_set(settings, service, path)
    else:
        log.info("training set '%s': %s is newer than its %d source files, reused", service, path, len(sources))
    return pq.read_table(path), path


def is_done(run: Path, config: TrainConfig) -> bool:
    """A finished run (metrics written) of exactly this configuration."""
    if not (run / "metrics.json").is_file() or not (run / "config.json").is_file():
        return False
    saved = json.loads((run / "config.json").read_text())
    return all(saved.get(key) == value for key, value in {**asdict(config), "learning_rate": config.lr}.items())


def run_experiments(settings: Settings, configs: Iterable[TrainConfig], overwrite: bool = False) -> list[Path]:
    """Train every configuration not already trained; one training set per feature service. Returns run folders."""
    out = settings.artifacts_dir
    configs = list(configs)
    pending = [c for c in configs if overwrite or not is_done(out / c.run_name, c)]
    pending.sort(key=lambda c: (c.service, c.knowledge_limit or 0))  # stable: one training set after another
    if len(pending) < len(configs):
        log.info("%d of %d runs already trained, skipped (--overwrite retrains them)", len(configs) - len(pending), len(configs))
    loaded = None  # the service whose training set is in memory: one at a time
    for n, config in enumerate(pending, start=1):
        if config.service != loaded:
            (table, path), loaded = training_table(settings, config.service), config.service
        log.info("run %d/%d: %s on training set '%s'", n, len(pending), config.run_name, config.service)
        model, result = train(table, config)
        run = save(model, result, out, dataset=settings.dataset, training_set=str(path), training_rows=table.num_rows)
        log.info("%s: best epoch %d, test auc %.4f, logloss %.4f -> %s", config.run_name, result.best_epoch,
                 result.test["auc"], result.test["logloss"], run)  # fmt: skip
    return [out / c.run_name for c in configs]
