"""Finished training runs as scoring needs them: the model rebuilt from its folder alone, its files checked against the
content hashes the run recorded, and the choice and recording of the run that serves (`publish`).

A run folder (r4ec.ranking.train.save) holds model.pt, vocab.json, config.json (the TrainConfig with the backbone's
options, the feature service, the knowledge run, the training set's fingerprint, the files' hashes) and metrics.json,
written last.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from r4ec import fingerprint, layout
from r4ec.config import Settings
from r4ec.ranking import RankingError


@dataclass
class SavedRun:
    """A run loaded for scoring: the model in eval mode, its vocabulary, and what it was trained on."""

    path: Path
    config: dict
    model: object  # torch.nn.Module
    vocab: object  # r4ec.ranking.data.Vocab
    digest: str  # the run by content: its configuration and the hashes of its files

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def feature_service(self) -> str:
        return self.config["feature_service"]

    @property
    def knowledge_run(self) -> str | None:
        run = self.config.get("knowledge_run")
        return run["name"] if run else None

    @property
    def history_length(self) -> int:
        return self.config["history_length"]


def finished_runs(settings: Settings) -> list[Path]:
    """Run folders of the dataset whose metrics are written (a run killed while training has none)."""
    root = settings.artifacts_dir
    return sorted(p for p in root.iterdir() if (p / "metrics.json").is_file()) if root.is_dir() else []


def servable(run: Path) -> bool:
    """Whether the run recorded what scoring needs and still holds it: runs trained before vocabularies were saved
    recorded no files, and runs restored from a study's archive come without their weights."""
    recorded = "files" in json.loads((run / "config.json").read_text())
    return recorded and all((run / name).is_file() for name in layout.RUN_FILES)


def validation_auc(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["valid"]["auc"]


def load_run(path: Path) -> SavedRun:
    """The run at `path`, rebuilt for scoring; a run whose files differ from the hashes it recorded is refused."""
    import torch

    from r4ec.ranking.data import Vocab
    from r4ec.ranking.train import TrainConfig, build_model, recorded_config

    if not (path / "metrics.json").is_file():
        raise RankingError(f"{path} is not a finished training run (no metrics.json)")
    config = json.loads((path / "config.json").read_text())
    recorded = config.get("files")
    if recorded is None:
        raise RankingError(f"{path} was trained before runs recorded their vocabulary: train it again to serve it")
    missing = [name for name in layout.RUN_FILES if not (path / name).is_file()]
    if missing:
        raise RankingError(f"{path} has no {', '.join(missing)} (a run restored from an archive keeps no weights): "
                           "train it again to serve it")  # fmt: skip
    found = {name: fingerprint.of_file(path / name) for name in layout.RUN_FILES}
    changed = [name for name in layout.RUN_FILES if found[name] != recorded.get(name)]
    if changed:
        raise RankingError(f"{path}: {', '.join(changed)} differ from the hashes the run recorded; train it again")
    vocab = Vocab.from_dict(json.loads((path / "vocab.json").read_text()))
    built = recorded_config(config)
    train_config = TrainConfig(**{f.name: built[f.name] for f in fields(TrainConfig) if f.name in built})
    model = build_model(train_config, vocab, config["knowledge_dim"])
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return SavedRun(path, config, model, vocab, fingerprint.of_json({"config": config, "files": found}))


def publish(settings: Settings, run: str | None = None) -> dict:
    """Make `run` (default: the best validation AUC among the dataset's finished, servable runs) the one that serves.

    What serves is a snapshot of the run (`published/<digest>/<run>/`): training the same configuration again
    rewrites the run's folder, never the model being served. The pointer file is replaced atomically (a service
    reads the old one or the new one, never half of either), and every publish is appended to the history: what
    replaced what, when, and by whom."""
    chosen = _choose(settings, run)
    loaded = load_run(chosen)  # refuses a run that cannot serve before anything is replaced
    snapshot = _snapshot(settings, chosen, loaded.digest)
    previous = published(settings)
    record = {
        "run": chosen.name, "path": str(snapshot), "digest": loaded.digest, "valid_auc": validation_auc(chosen),
        "feature_service": loaded.feature_service, "knowledge_run": loaded.knowledge_run,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "by": f"{getpass.getuser()}@{socket.gethostname()}", "replaced": previous["run"] if previous else None,
    }  # fmt: skip
    target = layout.published_path(settings)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(record, indent=2))
    os.replace(partial, target)
    with layout.publish_history_path(settings).open("a") as history:
        history.write(json.dumps(record) + "\n")
    return record


def _choose(settings: Settings, run: str | None) -> Path:
    runs = finished_runs(settings)
    if run is None:
        candidates = [p for p in runs if servable(p)]
        if not candidates:
            raise RankingError(f"no finished training run that can serve in {settings.artifacts_dir} ({len(runs)} "
                               "without weights or a recorded vocabulary): run `r4ec train` first")  # fmt: skip
        return max(candidates, key=validation_auc)
    chosen = settings.artifacts_dir / run
    if chosen not in runs:
        known = ", ".join(p.name for p in runs) or "none"
        raise RankingError(f"no finished run '{run}' in {settings.artifacts_dir} (finished: {known})")
    return chosen


def _snapshot(settings: Settings, run: Path, digest: str) -> Path:
    """An immutable copy of the run's files, named by their digest (copied under a temporary name, then renamed)."""
    target = layout.published_runs_dir(settings) / digest.split(":")[-1][:16] / run.name
    if not target.is_dir():
        partial = target.with_name(f".{run.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(run, partial)
        os.replace(partial, target)
    return target


@dataclass
class Gate:
    """What the publish gate decided: `published` is True when the candidate now serves."""

    published: bool
    candidate: str
    candidate_auc: float
    incumbent: str | None
    incumbent_auc: float | None
    reason: str

    def line(self) -> str:
        verdict = "published" if self.published else "not published"
        return f"{self.candidate} (valid AUC {self.candidate_auc:.4f}) {verdict}: {self.reason}"


def publish_if_better(settings: Settings, run: str) -> Gate:
    """Publish `run` only if its validation AUC beats the published run's on the same validation samples: the
    published model is scored again on today's validation split through its own feature service (the marts and the
    features may have moved on since it was trained, so its recorded figure would compare other samples)."""
    candidate = _choose(settings, run)
    candidate_auc = validation_auc(candidate)
    current = published(settings)
    if current is None:
        publish(settings, run)
        return Gate(True, run, candidate_auc, None, None, "nothing was published yet")
    loaded = load_run(candidate)
    if current["run"] == run and current["digest"] == loaded.digest:
        return Gate(False, run, candidate_auc, run, candidate_auc, "it is the published run already")
    try:
        incumbent = load_run(Path(current["path"]))
    except RankingError as error:
        publish(settings, run)
        return Gate(True, run, candidate_auc, current["run"], None, f"the published run cannot serve ({error})")
    incumbent_auc = validation_auc_now(settings, incumbent)
    better = candidate_auc > incumbent_auc
    if better:
        publish(settings, run)
    comparison = "beats" if better else "does not beat"
    return Gate(better, run, candidate_auc, current["run"], incumbent_auc,
                f"{comparison} the published {current['run']} ({incumbent_auc:.4f} on today's validation samples)")  # fmt: skip


def validation_auc_now(settings: Settings, run: SavedRun) -> float:
    """The run's AUC on the validation split of its feature service's training set as the marts and features stand
    now (retrieved through Feast where they changed)."""
    from r4ec.features.store import service_fingerprint
    from r4ec.ranking.data import to_tensors
    from r4ec.ranking.experiment import training_table
    from r4ec.ranking.train import KNOWLEDGE_COLUMNS, evaluate, split

    service = run.feature_service
    table, _ = training_table(settings, service, service_fingerprint(settings, service))
    knowledge = () if run.config["knowledge"] == "none" else KNOWLEDGE_COLUMNS
    valid = to_tensors(split(table, "valid"), run.vocab, run.history_length, knowledge, run.config["knowledge_dim"])
    return evaluate(run.model, valid)["auc"]


def published(settings: Settings) -> dict | None:
    """The record of the run that serves, or None before the first publish."""
    path = layout.published_path(settings)
    return json.loads(path.read_text()) if path.is_file() else None
