"""`r4ec demo`: every stage once on the embedded default, each step a function of the settings that returns the line
the demo prints for it."""

from __future__ import annotations

import json
import logging
import time

from r4ec.config import Settings
from r4ec.layout import KnowledgeRun

log = logging.getLogger("r4ec")


def data_step(settings: Settings) -> str:
    from r4ec.data import load_dataset

    return load_dataset(settings).line()


def marts_step(settings: Settings) -> str:
    from r4ec.marts import build_marts

    return build_marts(settings).line()


def knowledge_step(settings: Settings, entity: str) -> str:
    """Knowledge for the sample of one entity, then its vectors."""
    from r4ec.encoding import encode_knowledge
    from r4ec.knowledge.job import generate_knowledge
    from r4ec.knowledge.report import read_knowledge, summarize

    summary = generate_knowledge(settings, entity)
    figures = summarize(read_knowledge(summary.out_dir))
    judged = ", ".join(f"{ok}/{n} judged reasonable" for ok, n, _ in figures["reasonable_per_round"])
    vectors = encode_knowledge(settings, entity).line()
    return f"{summary.line()}; {judged or 'no reflection'}, {figures['refinements']} refined\n  - {vectors}"


def feature_step(settings: Settings) -> str:
    """Apply, materialize and write the training set of the settings' knowledge run (Base where it is not served)."""
    from r4ec.features.store import apply, materialize, write_training_set

    service = KnowledgeRun.of(settings).service
    services = apply(settings)
    materialize(settings)
    path, frame = write_training_set(settings, service if service in services else "base")
    covered = {
        entity: frame[f"{entity}_knowledge_vector"].notna().mean() if f"{entity}_knowledge_vector" in frame else 0
        for entity in ("user", "item")
    }
    return (
        f"feast: services {', '.join(services)}; training set of {len(frame):,} samples at {path}; knowledge "
        f"vectors reach {covered['user']:.1%} (user) and {covered['item']:.1%} (item) of the samples"
    )


def ranking_step(settings: Settings) -> str:
    """LR and DIN on Base, and DIN with the knowledge run where Feast serves it (with adapters: iterative-tuned, never
    the base models' run); then Table 2 of every finished run."""
    import torch

    from r4ec.features.store import feature_store
    from r4ec.ranking.experiment import run_experiments, train_configs
    from r4ec.ranking.report import write_dataset_report

    torch.set_num_threads(1)
    run = KnowledgeRun.of(settings)
    served = {service.name for service in feature_store(settings).list_feature_services()}
    knowledge = ["none", run.name] if run.service in served else ["none"]
    configs = train_configs(settings, ["lr", "din"], knowledge)
    run_experiments(settings, configs)
    report = write_dataset_report(settings)
    aucs = ", ".join(f"{c.backbone} {c.knowledge}: {_test_auc(settings, c.run_name):.4f}" for c in configs)
    return f"ranking: test AUC {aucs}; Table 2 of all {report.runs} finished runs at {report.markdown_path}"


def _test_auc(settings: Settings, run_name: str) -> float:
    return json.loads((settings.artifacts_dir / run_name / "metrics.json").read_text())["test"]["auc"]


STEPS = (
    ("data load", data_step),
    ("marts build", marts_step),
    ("user knowledge and vectors", lambda settings: knowledge_step(settings, "user")),
    ("item knowledge and vectors", lambda settings: knowledge_step(settings, "item")),
    ("feature store", feature_step),
    ("ranking", ranking_step),
)


def run_demo(settings: Settings) -> tuple[list[str], float]:
    """Each step's line, and the seconds the whole demo took."""
    started = time.perf_counter()
    lines = []
    for number, (name, step) in enumerate(STEPS, start=1):
        log.info("step %d/%d: %s", number, len(STEPS), name)
        lines.append(step(settings))
    return lines, time.perf_counter() - started
