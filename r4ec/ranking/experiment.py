"""Training runs on training sets from Feast: each feature service's set is retrieved (or reused while the content
of everything it is built from is unchanged), turned into tensors by `train`, and each finished run is saved under
DATA_DIR/models/artifacts/DATASET/<run>/ with the fingerprint of its training set and the identity of its knowledge
run. A sweep that dies resumes: a finished run is skipped only if it was trained on exactly this training set."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from r4ec.config import Settings
from r4ec.layout import ENTITIES, KnowledgeRun, encoder_tag
from r4ec.ranking import RankingError
from r4ec.ranking.train import BACKBONES, SPLITS, TrainConfig, recorded_config, save, train

log = logging.getLogger(__name__)


def training_table(settings: Settings, service: str, stamp: str) -> tuple[pa.Table, Path]:
    """The point-in-time training set of every CTR sample from `service`: reused while it carries `stamp` (the
    fingerprint of the CTR samples and every source file of the service's views), else rebuilt through Feast."""
    from r4ec.features.store import training_set_stamp, write_training_set
    from r4ec.layout import training_set_path

    path = training_set_path(settings, service)
    found = training_set_stamp(path)
    if found == stamp:
        log.info("training set '%s': %s was built from exactly these inputs, reused", service, path)
    else:
        why = "not built yet" if found is None and not path.exists() else "its inputs changed"
        log.info("training set '%s': retrieving from Feast (%s)", service, why)
        write_training_set(settings, service, path, stamp)
    return pq.read_table(path), path


def quality_shares(table: pa.Table) -> dict[str, dict[str, dict[str, float]]]:
    """split -> entity -> share of samples whose knowledge is parsed / fallback / missing (no vector as of then)."""
    import pyarrow.compute as pc

    shares: dict[str, dict[str, dict[str, float]]] = {}
    for name in SPLITS:
        rows = table.filter(pc.equal(table.column("split"), name))
        for entity in ENTITIES:
            column = f"{entity}_knowledge_quality"
            if column not in rows.column_names or not rows.num_rows:
                continue
            values = rows.column(column).fill_null("missing").to_pylist()
            counts = {kind: values.count(kind) / len(values) for kind in ("parsed", "fallback", "missing")}
            shares.setdefault(name, {})[entity] = counts
    return shares


def knowledge_run(settings: Settings, config: TrainConfig, table: pa.Table) -> dict | None:
    """What the run's knowledge was built from (r4ec.knowledge.runs.describe) and how much of each split it reached."""
    from r4ec.knowledge.runs import describe

    if config.knowledge == "none":
        return None
    return {**describe(settings, KnowledgeRun.named(config.knowledge, config.knowledge_limit)), "quality_shares": quality_shares(table)}


def train_configs(
    settings: Settings,
    backbones: Iterable[str] = ("din",),
    knowledge: Iterable[str] = ("none",),
    seeds: Iterable[int] | None = None,
    **options: object,
) -> list[TrainConfig]:
    """The sweep grid backbone x knowledge x seed. 'all' is every backbone but lr; lr trains on base features only
    and takes no connector. K, the knowledge sample, its encoder and the default seed come from the settings;
    `options` are TrainConfig fields (epochs, learning_rate, ...), None meaning 'the default'."""
    every = [name for name in BACKBONES if name != "lr"]
    names = list(dict.fromkeys(b for name in backbones for b in (every if name == "all" else [name])))
    options = {"history_length": settings.history_length, **{k: v for k, v in options.items() if v is not None}}
    lr_options = {k: v for k, v in options.items() if k != "connector"}  # no knowledge, so no connector
    seeds = list(seeds or ()) or [settings.seed]
    encoder = encoder_tag(settings.knowledge.encoder)
    knowledge = [k if k == "none" else KnowledgeRun.named(k).encoded_by(encoder).name for k in knowledge]
    return [
        TrainConfig(backbone=backbone, knowledge=kind, seed=seed,
                    knowledge_limit=settings.knowledge.limit if kind != "none" else None,
                    **(lr_options if backbone == "lr" else options))
        for backbone in names
        for kind in (["none"] if backbone == "lr" else list(knowledge))
        for seed in seeds
    ]  # fmt: skip


def check_history_length(settings: Settings, configs: Iterable[TrainConfig]) -> None:
    """Every run's K must be the K the marts were built with: a larger one would be padded, a smaller one would cut
    each history short without a word. Also the first check that there are marts to train on at all."""
    from r4ec.marts import built_with

    samples = settings.marts_dir / "ctr_samples.parquet"
    if not samples.is_file():
        raise RankingError(f"no CTR samples at {samples}: run `r4ec data load` and `r4ec marts build` first")
    built = built_with(settings.marts_dir)
    if built is None:
        raise RankingError(f"the marts in {settings.marts_dir} do not say which K they were built with "
                           "(no marts_settings.parquet): rebuild them with `r4ec marts build`")  # fmt: skip
    for config in configs:
        if config.history_length != built["history_length"]:
            raise RankingError(
                f"{config.run_name}: history_length {config.history_length}, but the marts in {settings.marts_dir} "
                f"were built with {built['history_length']}: rebuild the marts with R4EC_HISTORY_LENGTH="
                f"{config.history_length}, or train with {built['history_length']}"
            )


def is_done(run: Path, config: TrainConfig, stamp: str) -> bool:
    """A finished run (metrics written) of exactly this configuration, on the training set with this fingerprint."""
    if not (run / "metrics.json").is_file() or not (run / "config.json").is_file():
        return False
    saved = recorded_config(json.loads((run / "config.json").read_text()))
    if not all(saved.get(key) == value for key, value in {**asdict(config), "learning_rate": config.lr}.items()):
        return False
    if saved.get("training_set_fingerprint") != stamp:
        log.warning("%s: trained on a training set built from other inputs: training it again", run.name)
        return False
    return True


def run_experiments(settings: Settings, configs: Iterable[TrainConfig], overwrite: bool = False) -> list[Path]:
    """Train every configuration not already trained; one training set per feature service. Returns run folders."""
    from r4ec.features.store import service_fingerprint

    out = settings.artifacts_dir
    configs = list(configs)
    check_history_length(settings, configs)
    # service_fingerprint reads each service's sources first: an unregistered service is a one-line error
    stamps = {service: service_fingerprint(settings, service) for service in dict.fromkeys(c.service for c in configs)}
    pending = [c for c in configs if overwrite or not is_done(out / c.run_name, c, stamps[c.service])]
    pending.sort(key=lambda c: c.service)  # stable: one training set after another
    if len(pending) < len(configs):
        log.info("%d of %d runs already trained, skipped (--overwrite retrains them)", len(configs) - len(pending), len(configs))
    loaded = None  # the service whose training set is in memory: one at a time
    for n, config in enumerate(pending, start=1):
        if config.service != loaded:
            (table, path), loaded = training_table(settings, config.service, stamps[config.service]), config.service
            knowledge = knowledge_run(settings, config, table)
        log.info("run %d/%d: %s on training set '%s'", n, len(pending), config.run_name, config.service)
        model, result = train(table, config)
        run = save(model, result, out, dataset=settings.dataset, training_set=str(path), training_rows=table.num_rows,
                   training_set_fingerprint=stamps[config.service], knowledge_run=knowledge)  # fmt: skip
        log.info("%s: best epoch %d, test auc %.4f, logloss %.4f -> %s", config.run_name, result.best_epoch,
                 result.test["auc"], result.test["logloss"], run)  # fmt: skip
    return [out / c.run_name for c in configs]
