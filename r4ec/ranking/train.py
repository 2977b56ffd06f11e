"""Train a backbone on a training set from Feast, choose the epoch on the validation split only, test once.

The training set is turned into tensors once; an epoch is a seeded permutation cut into batches. Artifacts go to
models/artifacts/<run>/: the weights of the chosen epoch, the configuration, the metrics, the feature service used.
Each backbone's own settings (DCN's crosses, AutoInt's heads, ...) come from its table in models/backbones.toml,
as FuxiCTR's model_config.yaml, and are recorded with the run.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from r4ec import fingerprint
from r4ec.config import Settings
from r4ec.data.tables import write_parquet
from r4ec.layout import BASE_SERVICE, PREDICTIONS, RUN_FILES, RUN_NAMES, KnowledgeRun, is_run_name
from r4ec.ranking import RankingError
from r4ec.ranking.autoint import AutoInt
from r4ec.ranking.connectors import CONNECTORS
from r4ec.ranking.data import FIELDS, Tensors, Vocab, to_tensors
from r4ec.ranking.dcn import DCN
from r4ec.ranking.deepfm import DeepFM
from r4ec.ranking.dien import DIEN
from r4ec.ranking.din import DIN
from r4ec.ranking.fignn import FiGNN
from r4ec.ranking.gru4rec import GRU4Rec
from r4ec.ranking.logistic import LogisticRegression

log = logging.getLogger(__name__)

BACKBONES: dict[str, type[nn.Module]] = {
    "lr": LogisticRegression, "din": DIN, "dien": DIEN, "gru4rec": GRU4Rec, "autoint": AutoInt, "fignn": FiGNN,
    "dcn": DCN, "deepfm": DeepFM,
}  # fmt: skip
KNOWLEDGE_COLUMNS = ("user_knowledge_vector", "item_knowledge_vector")
KNOWLEDGE = ("none", *RUN_NAMES)
# Adam's step size, chosen on ml-100k's validation AUC (seed 1; 1e-3 and 3e-3 for the backbones, 3e-3 to 3e-2 for lr)
LEARNING_RATES = {"lr": 1e-2}
DEFAULT_LEARNING_RATE = 3e-3
SPLITS = ("train", "valid", "test")
OPTIONS_FILE = Path(__file__).resolve().parents[2] / "models" / "backbones.toml"
SET_BY_CONFIG = ("self", "vocab_size", "fields", "dim", "knowledge_types", "knowledge_dim", "connector")


def default_options(backbone: str) -> dict:
    """What a backbone's constructors (its own, then Backbone's) take beyond what TrainConfig sets, with their
    defaults; tuples as lists, as config.json records them."""
    options = {}
    for cls in reversed(BACKBONES[backbone].__mro__):
        init = cls.__dict__.get("__init__")
        if init is None or not cls.__module__.startswith("r4ec."):
            continue
        for name, parameter in inspect.signature(init).parameters.items():
            if parameter.default is not parameter.empty and name not in SET_BY_CONFIG:
                options[name] = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
    return options


def backbone_options(backbone: str, given: dict | None = None) -> dict:
    """The backbone's settings: its constructors' defaults, then its table in models/backbones.toml, then `given`.
    A name no constructor takes, or a value of another kind than the default's, is a one-line error."""
    defaults = default_options(backbone)
    table = tomllib.loads(OPTIONS_FILE.read_text()).get(backbone, {}) if OPTIONS_FILE.is_file() else {}
    options = {name: list(v) if isinstance(v, tuple) else v for name, v in {**defaults, **table, **(given or {})}.items()}
    wrong = [f"no option '{name}'" for name in options if name not in defaults]
    wrong += [f"{name} = {value!r} is not a {type(defaults[name]).__name__}" for name, value in options.items()
              if name in defaults and not _same_kind(value, defaults[name])]  # fmt: skip
    if wrong:
        known = ", ".join(f"{k} = {v!r}" for k, v in defaults.items()) or "none"
        raise RankingError(f"{backbone}: {'; '.join(wrong)} (its options and defaults: {known}; {OPTIONS_FILE.name})")
    return options


def _same_kind(value: object, default: object) -> bool:
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return type(value) is type(default)


def recorded_config(saved: dict) -> dict:
    """A run's config.json with what runs saved before backbones' options were recorded were built with: their
    constructors' defaults (models/backbones.toml came later, with the same values)."""
    return saved if "options" in saved else {**saved, "options": default_options(saved["backbone"])}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. K (history_length) and the seed default to the Settings defaults, their only source; a
    sweep takes both from the settings in use (r4ec.ranking.experiment.train_configs)."""

    backbone: str = "din"
    knowledge: str = "none"  # the feature service's knowledge run: none (base), single, iterative-tuned, ... (any
    # encoded by another encoder than the default: iterative-enc-allmpnetbasev2)
    knowledge_limit: int | None = None  # the knowledge run was on a sample of this many users and items
    seed: int = Settings.model_fields["seed"].default
    epochs: int = 10
    patience: int = 2  # epochs without a better validation AUC before stopping
    batch_size: int = 1024
    learning_rate: float | None = None  # None: LEARNING_RATES of the backbone, else DEFAULT_LEARNING_RATE
    weight_decay: float = 0.0
    dim: int = 16
    connector: str = "mlp"
    history_length: int = Settings.model_fields["history_length"].default  # K: must be the marts' K
    options: dict | None = None  # the backbone's own settings over models/backbones.toml's; all of them once built

    def __post_init__(self) -> None:
        """A configuration that cannot train fails here, in one line, not as a traceback epochs later."""
        problems = [
            f"unknown {name} '{value}' (known: {', '.join(known)})"
            for name, value, known in (("backbone", self.backbone, BACKBONES), ("knowledge", self.knowledge, KNOWLEDGE),
                                       ("connector", self.connector, CONNECTORS))
            if value not in known and not (name == "knowledge" and is_run_name(value))
        ]  # fmt: skip
        positive = ("epochs", "patience", "batch_size", "dim", "history_length")
        at_least_one = {name: getattr(self, name) for name in positive}
        if self.knowledge_limit is not None:
            at_least_one["knowledge_limit"] = self.knowledge_limit
        problems += [f"{name} must be at least 1, not {value}" for name, value in at_least_one.items() if value < 1]
        if self.learning_rate is not None and not self.learning_rate > 0:
            problems.append(f"learning_rate must be positive, not {self.learning_rate}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must not be negative, not {self.weight_decay}")
        if problems:
            raise RankingError(f"bad training configuration: {'; '.join(problems)}")
        try:
            object.__setattr__(self, "options", backbone_options(self.backbone, self.options))
        except RankingError as error:
            raise RankingError(f"bad training configuration: {error}") from None

    @property
    def service(self) -> str:
        """The Feast service, named by r4ec.layout's one rule: a sampled knowledge run's says so (single_sample20)."""
        return BASE_SERVICE if self.knowledge == "none" else KnowledgeRun.named(self.knowledge, self.knowledge_limit).service

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else LEARNING_RATES.get(self.backbone, DEFAULT_LEARNING_RATE)

    @property
    def run_name(self) -> str:
        """BACKBONE-KNOWLEDGE-CONNECTOR-seedS, the knowledge run named by r4ec.layout (din-single-sample20-mlp-seed1)."""
        knowledge = "none" if self.knowledge == "none" else KnowledgeRun.named(self.knowledge, self.knowledge_limit).folder
        return f"{self.backbone}-{knowledge}-{self.connector}-seed{self.seed}"


@dataclass
class Result:
    config: TrainConfig
    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: train loss, valid auc / logloss
    seconds: float = 0.0
    samples_per_second: float = 0.0
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> rows, positives
    vocab: Vocab | None = None  # what scoring needs besides the weights: the ids the model was trained on
    knowledge_dim: int = 0
    predictions: pa.Table | None = None  # the test split scored by the chosen epoch (PREDICTION_COLUMNS + score)


def split(table: pa.Table, name: str) -> pa.Table:
    return table.filter(pc.equal(table.column("split"), name))


def score(model: nn.Module, tensors: Tensors, batch_size: int = 8192) -> np.ndarray:
    """The model's click probability for every row, in the rows' order."""
    model.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(tensors), batch_size):
            index = torch.arange(start, min(start + batch_size, len(tensors)))
            scores.append(torch.sigmoid(model(tensors.batch(index))))
    return torch.cat(scores).numpy().astype(np.float64)


def metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {"auc": float(roc_auc_score(labels, scores)), "logloss": float(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7)))}


def evaluate(model: nn.Module, tensors: Tensors) -> dict[str, float]:
    return metrics(tensors.label.numpy(), score(model, tensors))


PREDICTION_COLUMNS = ("sample_id", "user_id", "item_id", "label")


def predictions(table: pa.Table, scores: np.ndarray) -> pa.Table:
    """The test split's (sample id, user, item, label, score): any metric, on any slice, recomputed from the run."""
    return split(table, "test").select(list(PREDICTION_COLUMNS)).append_column("score", pa.array(scores))


def build_model(config: TrainConfig, vocab: Vocab, knowledge_dim: int) -> nn.Module:
    if config.backbone == "lr":
        return LogisticRegression(vocab.size)
    types = 0 if config.knowledge == "none" else len(KNOWLEDGE_COLUMNS)
    return BACKBONES[config.backbone](
        vocab.size, len(FIELDS), dim=config.dim, knowledge_types=types, knowledge_dim=knowledge_dim,
        connector=config.connector, **config.options,
    )  # fmt: skip


def split_tensors(table: pa.Table, config: TrainConfig) -> tuple[Vocab, dict[str, Tensors], int]:
    """Vocabularies from the train split; the whole set as tensors once, each split an index into them.
    Returns (vocab, split -> tensors, knowledge vector width or 0)."""
    knowledge = () if config.knowledge == "none" else KNOWLEDGE_COLUMNS
    vocab = Vocab.fit(split(table, "train"))
    everything = to_tensors(table, vocab, config.history_length, knowledge)
    splits = table.column("split").to_numpy(zero_copy_only=False)
    tensors = {name: everything.subset(torch.from_numpy(np.flatnonzero(splits == name))) for name in SPLITS}
    return vocab, tensors, 0 if everything.knowledge is None else everything.knowledge.shape[-1]


def split_sizes(tensors: dict[str, Tensors]) -> dict[str, dict[str, int]]:
    """Rows and positives per split; a split without both classes is an error before any epoch is spent: AUC is
    undefined on it (train: nothing to learn; valid: no epoch can be chosen; test: no figure to report)."""
    sizes = {name: {"rows": len(t), "positives": int(t.label.sum())} for name, t in tensors.items()}
    for name, size in sizes.items():
        if not 0 < size["positives"] < size["rows"]:
            counts = ", ".join(f"{n} {s['rows']:,} rows ({s['positives']:,} positive)" for n, s in sizes.items())
            raise RankingError(
                f"the {name} split has {size['rows']:,} rows, {size['positives']:,} of them positive: it needs both "
                f"classes for an AUC ({counts}); more users, or another valid_strategy / valid_fraction"
            )
    return sizes


def train(table: pa.Table, config: TrainConfig) -> tuple[nn.Module, Result]:
    """Fit on train, keep the epoch with the best validation AUC, report test metrics of that epoch."""
    torch.manual_seed(config.seed)
    vocab, tensors, knowledge_dim = split_tensors(table, config)
    sizes = split_sizes(tensors)
    model = build_model(config, vocab, knowledge_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(config.seed)
    best_auc, best_epoch, best_state, history, stale = -1.0, 0, None, [], 0
    started, seen = time.perf_counter(), 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(tensors["train"]), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = tensors["train"].batch(order[start : start + config.batch_size])
            loss = loss_fn(model(batch), batch.label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch.label)
        seen += len(order)
        valid = evaluate(model, tensors["valid"])
        history.append({"epoch": epoch, "train_logloss": total / len(order), **{f"valid_{k}": v for k, v in valid.items()}})
        log.info("%s epoch %d: train logloss %.4f, valid auc %.4f", config.backbone, epoch, total / len(order), valid["auc"])
        if valid["auc"] > best_auc:
            best_auc, best_epoch, stale = valid["auc"], epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    test_scores = score(model, tensors["test"])
    result = Result(config, best_epoch, evaluate(model, tensors["valid"]), metrics(tensors["test"].label.numpy(), test_scores),
                    history, seconds, seen / seconds, sizes, vocab, knowledge_dim, predictions(table, test_scores))  # fmt: skip
    return model, result




def save(model: nn.Module, result: Result, directory: Path, **about: object) -> Path:
    """A self-contained run: weights, vocabulary, configuration (plus `about`, e.g. the training set, and the content
    hashes of the weights and vocabulary), test predictions and metrics; returns the run folder. metrics.json is
    written last: a run folder that has it is complete."""
    c = result.config
    run = directory / c.run_name
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").unlink(missing_ok=True)
    torch.save(model.state_dict(), run / "model.pt")
    (run / "vocab.json").write_text(json.dumps(result.vocab.as_dict() if result.vocab else None))
    files = {name: fingerprint.of_file(run / name) for name in RUN_FILES}
    config = {**asdict(c), "learning_rate": c.lr, "feature_service": c.service, "knowledge_dim": result.knowledge_dim,
              "files": files, **about}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if result.predictions is not None:
        write_parquet(result.predictions, run / PREDICTIONS)
    figures = {"best_epoch": result.best_epoch, "valid": result.valid, "test": result.test, "epochs": result.history,
               "splits": result.splits, "seconds": result.seconds,
               "samples_per_second": result.samples_per_second}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(figures, indent=2))
    return run
