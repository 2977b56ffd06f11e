"""Where every stage's outputs live, and the one naming rule for knowledge runs and samples.

Pure functions of the settings, with no heavy imports: every stage, door (CLI, Spark job, Feast repo, DAG) and test
asks here instead of assembling another stage's folder names.

    DATA_DIR/marts/DATASET/<mart>.parquet                          dbt marts
    DATA_DIR/knowledge/DATASET/<run>/<entity>_knowledge/           knowledge parts of a run (+ _manifest.json), and
                                                                   of each refresh (part-asofEND-*, _refresh-asofEND.json)
    DATA_DIR/knowledge/DATASET/<run>/<entity>_knowledge_vectors/   their vectors, one part per knowledge part (and
                                   <entity>_knowledge_vectors-<encoder>/  by another encoder than all-MiniLM-L6-v2)
    DATA_DIR/training/DATASET/<service>.parquet                    point-in-time training sets from Feast
    DATA_DIR/models/artifacts/DATASET/<training run>/              trained CTR models
    DATA_DIR/models/artifacts/DATASET/PUBLISHED.json               the run that serves (+ publish_history.jsonl)
    DATA_DIR/models/artifacts/DATASET/published/<digest>/<run>/    snapshots of published runs
    DATA_DIR/reports/DATASET/                                      Table 2 and the study's journal and benchmarks
    DATA_DIR/cache/answers.sqlite                                  every LLM answer (r4ec.knowledge.cache)

A knowledge run is a strategy on all entities (`iterative`) or on a seeded sample of N of them
(`iterative-sample20`), by the base models or with LoRA adapters (`iterative-tuned`, `iterative-tuned-sample20`), with
the paper's one reflect / refine round or with N (`iterative-r2`); its Feast service is the same name with underscores
(`iterative_r2_tuned_sample20`), so a sampled run can never be read as the full one, a tuned run as the base models',
nor two rounds as one. Its knowledge encoded by another sentence encoder than the default is its own run for Feast
and training (`iterative-enc-allmpnetbasev2`, Table 4), over the same knowledge parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

from r4ec.config import KnowledgeSettings, Settings
from r4ec.local_models import MINILM

ENTITIES = ("user", "item")
BASE_SERVICE = "base"
MANIFEST = "_manifest.json"  # what a knowledge folder was built from
COMPLETE = "_COMPLETE.json"  # written last by the encode step: every knowledge part has its vectors, nothing else
TUNED = "-tuned"  # the run's actor or reflector had a LoRA adapter (which ones, by hash: the run's manifest)
STRATEGIES: tuple[str, ...] = get_args(KnowledgeSettings.model_fields["strategy"].annotation)  # the config's one list
NO_LLM = "text"  # the strategy that asks no model, so has nothing to tune
ROUNDS = range(2, 6)  # the iterative strategy's reflect / refine rounds beyond the paper's one that runs may be named by
_BASE_NAMES = (*STRATEGIES, *(f"iterative-r{n}" for n in ROUNDS))
RUN_NAMES = (*_BASE_NAMES, *(s + TUNED for s in _BASE_NAMES if s != NO_LLM))  # what a training configuration may name
_RUN = re.compile(
    r"^(?P<strategy>[a-z]+)(?:[-_]r(?P<rounds>[1-9][0-9]*))?(?P<tuned>[-_]tuned)?(?:[-_]enc[-_](?P<encoder>[a-z0-9]+))?"
    r"(?:[-_]sample(?P<limit>[1-9][0-9]*))?$"
)
VECTORS = "{entity}_knowledge_vectors"
# a training run's files (r4ec.ranking.train writes them): what scoring loads, named by content in config.json,
# and the test split's scores
RUN_FILES = ("model.pt", "vocab.json")
PREDICTIONS = "predictions.parquet"


def encoder_tag(encoder: str) -> str | None:
    """How a run's name says its encoder: nothing for the default, else the folder's name in lower-case letters and
    digits (`data/models/all-mpnet-base-v2` -> `allmpnetbasev2`)."""
    if encoder == MINILM:
        return None
    tag = re.sub(r"[^a-z0-9]", "", Path(encoder).name.lower())
    if not tag:
        raise ValueError(f"{encoder!r}: an encoder folder's name needs a letter or digit")
    return tag


@dataclass(frozen=True)
class KnowledgeRun:
    """A strategy on all entities (limit None) or on a seeded sample of `limit` users and `limit` items, by the base
    models or (tuned) with an actor or reflector adapter; the iterative strategy with its number of rounds; its
    knowledge encoded by the default encoder (encoder None) or another (its `encoder_tag`)."""

    strategy: str
    limit: int | None = None
    tuned: bool = False
    rounds: int = 1
    encoder: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> KnowledgeRun:
        k = settings.knowledge
        rounds = k.rounds if k.strategy == "iterative" else 1
        tuned = k.actor_adapter is not None or k.reflector_adapter is not None
        return cls(k.strategy, k.limit, tuned, rounds, encoder_tag(k.encoder))

    @classmethod
    def named(cls, knowledge: str, limit: int | None = None) -> KnowledgeRun:
        """From a training configuration's knowledge (`iterative`, `iterative-r2-tuned`) and sample size."""
        run = cls.parse(knowledge)
        if run is None or run.limit is not None or run.encoded_by(None).name not in RUN_NAMES:
            raise ValueError(f"{knowledge!r} names no knowledge run (one of {', '.join(RUN_NAMES)})")
        return replace(run, limit=limit)

    @classmethod
    def parse(cls, name: str) -> KnowledgeRun | None:
        """From a folder (`iterative-sample20`) or service (`iterative_sample20`) name; None if it is neither."""
        match = _RUN.match(name)
        if match is None or (match["rounds"] and (match["strategy"] != "iterative" or match["rounds"] == "1")):
            return None  # rounds name only iterative runs, and only beyond the default one
        limit, rounds = int(match["limit"]) if match["limit"] else None, int(match["rounds"] or 1)
        return cls(match["strategy"], limit, match["tuned"] is not None, rounds, match["encoder"])

    @property
    def name(self) -> str:
        """The knowledge as a training configuration names it (`iterative-r2-tuned`, `iterative-enc-allmpnetbasev2`):
        the folder without the sample."""
        encoder = f"-enc-{self.encoder}" if self.encoder else ""
        return self.strategy + (f"-r{self.rounds}" if self.rounds != 1 else "") + (TUNED if self.tuned else "") + encoder

    @property
    def folder(self) -> str:
        return self.name if self.limit is None else f"{self.name}-sample{self.limit}"

    @property
    def service(self) -> str:
        """The Feast feature service (and view suffix) of this run: Feast names take no hyphen."""
        return self.folder.replace("-", "_")

    def encoded_by(self, encoder: str | None) -> KnowledgeRun:
        return replace(self, encoder=encoder)


def is_run_name(name: str) -> bool:
    """A knowledge run a training configuration may name: one of RUN_NAMES, by the default encoder or another."""
    try:
        return KnowledgeRun.named(name) is not None
    except ValueError:
        return False


def run_order(name: str) -> tuple[int, str]:
    """Where a run's rows go in a table: RUN_NAMES' order, each run's other encoders right after it."""
    run = KnowledgeRun.named(name)
    return RUN_NAMES.index(run.encoded_by(None).name), run.encoder or ""


def knowledge_run_dir(settings: Settings, run: KnowledgeRun | None = None) -> Path:
    """The folder of the run's knowledge, shared by every encoder's vectors of it."""
    return settings.knowledge_dir / (run or KnowledgeRun.of(settings)).encoded_by(None).folder


def knowledge_dir(settings: Settings, entity: str, run: KnowledgeRun | None = None) -> Path:
    """The knowledge parts of the settings' run (or of `run`)."""
    return knowledge_run_dir(settings, run) / f"{entity}_knowledge"


def vectors_dir(settings: Settings, entity: str, run: KnowledgeRun | None = None) -> Path:
    run = run or KnowledgeRun.of(settings)
    tag = f"-{run.encoder}" if run.encoder else ""
    return knowledge_run_dir(settings, run) / (VECTORS.format(entity=entity) + tag)


def all_vectors_dirs(settings: Settings, entity: str) -> list[Path]:
    """The entity's vectors of the settings' knowledge by every encoder: what regenerating that knowledge makes stale."""
    return sorted(knowledge_run_dir(settings).glob(VECTORS.format(entity=entity) + "*"))


def knowledge_runs(settings: Settings) -> list[KnowledgeRun]:
    """Every run (knowledge folder and encoder) of the dataset whose user and item vectors are both complete (encoded
    to the last part)."""
    if not settings.knowledge_dir.is_dir():
        return []
    found = []
    for folder in sorted(p for p in settings.knowledge_dir.iterdir() if p.is_dir()):
        run = KnowledgeRun.parse(folder.name)
        if run is None or run.encoder:
            continue
        prefix = VECTORS.format(entity=ENTITIES[0])
        suffixes = sorted(p.name.removeprefix(prefix) for p in folder.glob(prefix + "*"))  # "" first: the default
        found += [run.encoded_by(s[1:] or None) for s in suffixes if re.fullmatch(r"(-[a-z0-9]+)?", s)]
    return [r for r in found if all((vectors_dir(settings, e, r) / COMPLETE).is_file() for e in ENTITIES)]


def part_name(number: int, refresh: str | None = None) -> str:
    """`part-00003.parquet` of a run; `part-asof19980108T000000-00003.parquet` of the refresh ending at that time."""
    return f"part-{number:05d}.parquet" if refresh is None else f"part-asof{refresh}-{number:05d}.parquet"


def part_name_glob(refresh: str | None = None) -> str:
    """The parts a run generated at once (not its refreshes), or those of one refresh."""
    return "part-[0-9]*.parquet" if refresh is None else f"part-asof{refresh}-*.parquet"


def refresh_tag(end: datetime) -> str:
    return end.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


def refresh_manifest_name(refresh: str) -> str:
    """What one refresh of a knowledge run was built from, beside the run's own `_manifest.json`."""
    return f"_refresh-asof{refresh}.json"


REFRESH_MANIFESTS = "_refresh-asof*.json"


def mart_path(settings: Settings, mart: str) -> Path:
    return settings.marts_dir / f"{mart}.parquet"


def prompt_inputs_path(settings: Settings, entity: str) -> Path:
    return mart_path(settings, f"{entity}_prompt_inputs")


def refresh_inputs_path(settings: Settings, entity: str) -> Path:
    return mart_path(settings, f"{entity}_refresh_inputs")


def construction_dir(settings: Settings) -> Path:
    """The teacher's construction answers (Algorithm 1), one part per Spark task (+ _manifest.json)."""
    return settings.tuning_dir / "construction"


def sft_dir(settings: Settings) -> Path:
    """reason.jsonl, reflect.jsonl, refine.jsonl and card.json: the SFT data sets built from the construction."""
    return settings.tuning_dir / "sft"


def adapter_dir(settings: Settings, role: str) -> Path:
    """A role's LoRA run: `adapter/` (peft), `training.json`, and `checkpoint/` while it trains."""
    return settings.tuning_dir / "adapters" / role


def trained_adapter(settings: Settings, role: str) -> Path:
    """The peft adapter `r4ec tuning train --role ROLE` writes (inside `adapter_dir`)."""
    return adapter_dir(settings, role) / "adapter"


def evaluation_dir(settings: Settings, entity: str, reflector_model: str | None = None) -> Path:
    """The held-out comparison of the base and the tuned pair on one entity's samples (or of the base and another
    model reflecting): evaluation.json, evaluation.md, outcomes.jsonl."""
    return settings.tuning_dir / "evaluation" / (f"{entity}-reflector-{Path(reflector_model).name}" if reflector_model else entity)


def training_set_path(settings: Settings, service: str) -> Path:
    """One file per feature service; a sampled run's service name already says so."""
    return settings.training_dir / f"{service}.parquet"


def published_path(settings: Settings) -> Path:
    return settings.artifacts_dir / "PUBLISHED.json"


def published_runs_dir(settings: Settings) -> Path:
    """Snapshots of published runs, `<digest>/<run>/`: what serves is never rewritten by training again."""
    return settings.artifacts_dir / "published"


def publish_history_path(settings: Settings) -> Path:
    return settings.artifacts_dir / "publish_history.jsonl"


def vector_cache_path(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "cache" / "vectors.sqlite"


STUDY_JOURNAL = "study-journal.jsonl"  # every command the study ran, in the reports folder
PROBE_RESULTS = "probe"  # in a reports folder: <service>/result.json, its training set's probe by stamp (r4ec.ranking.probe)


def study_journal_path(settings: Settings) -> Path:
    return settings.reports_dir / STUDY_JOURNAL


def benchmarks_dir(settings: Settings) -> Path:
    """The study's speed benchmarks, `<name>.md` each, as they printed."""
    return settings.reports_dir / "benchmarks"


@dataclass(frozen=True)
class Kept:
    """A kind of folder worth keeping beyond one machine (`r4ec.archive`): where such folders are (a glob relative to
    DATA_DIR), which of their files, and the file whose presence says one is finished (None: any of them)."""

    folders: str
    files: tuple[str, ...]
    finished: str | None = None


def kept(settings: Settings) -> tuple[Kept, ...]:
    """What took an LLM, an encoder or a training run long to make. Training sets, Feast and the marts are minutes to
    rebuild from these and the raw data, and are left out; vectors are kept because encoding every run again takes
    most of an hour (all-mpnet-base-v2 alone ~25 minutes on ml-100k)."""
    root = settings.data_dir.resolve()

    def at(path: Path, *more: str) -> str:
        return str(path.relative_to(root).joinpath(*more))

    return (
        Kept(at(settings.knowledge_dir, "*", "*_knowledge"), (MANIFEST, REFRESH_MANIFESTS, "part-*.parquet")),
        # each part stamped with its knowledge part's hash and the encoder's: encode and Feast check what is restored
        Kept(at(settings.knowledge_dir, "*", "*_knowledge_vectors*"), (COMPLETE, "part-*.parquet"), COMPLETE),
        Kept(at(construction_dir(settings)), (MANIFEST, "part-*.parquet")),
        Kept(at(sft_dir(settings)), ("*.jsonl", "card.json"), "card.json"),
        Kept(at(adapter_dir(settings, "*")), ("training.json", "adapter/*"), "adapter/adapter_config.json"),
        Kept(at(evaluation_dir(settings, "*")), ("evaluation.*", "outcomes.jsonl"), "evaluation.json"),
        # finished training runs (not `published/`), without their weights (~0.8 MB a run): the study's pages read
        # the metrics and test predictions, and it publishes nothing; a run to serve is trained again in minutes
        Kept(at(settings.artifacts_dir, "*"), ("config.json", "metrics.json", PREDICTIONS, "vocab.json"), "metrics.json"),
        Kept(at(settings.reports_dir), (STUDY_JOURNAL,)),
        # the probe's results, which the report reads for runs whose training set is not here (kept by their stamp);
        # a folder per service, so one made here never hides another's archived result
        Kept(at(settings.reports_dir, PROBE_RESULTS, "*"), ("result.json",)),
        Kept(at(benchmarks_dir(settings)), ("*.md",)),
    )
