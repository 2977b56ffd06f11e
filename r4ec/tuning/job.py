"""`r4ec tuning build-data`: Algorithm 1 over the users and the items as a Spark job, then the SFT data sets and their card.

Like knowledge generation: the samples are cut into parts, each Spark task runs the teacher on one part and writes
`part-NNNNN.parquet` (one row per construction, with the examples it contributes), a `_manifest.json` records what
decides the answers (teacher by content hash, engine, prompts, generation, draws, held-out share, protocol, the
samples), a part is reused only while its stamp matches, and every reply is cached. The data sets are then written
from the parts: `reason.jsonl`, `reflect.jsonl`, `refine.jsonl` (chat format, with provenance) and `card.json`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from r4ec import fingerprint, layout
from r4ec.config import Settings
from r4ec.data.tables import write_parquet
from r4ec.knowledge import KnowledgeError
from r4ec.knowledge.backends import GenerationConfig
from r4ec.knowledge.job import (
    PROTOCOL_VARS,
    log_to_stderr,
    part_stamp,
    pipelines,
    served_engine,
    serving_engines,
    worker_backend,
)  # fmt: skip
from r4ec.knowledge.progress import FOLDER as PROGRESS_FOLDER
from r4ec.knowledge.progress import PartProgress
from r4ec.knowledge.prompts import CONSTRUCTION_VERSION, PROMPT_VERSION
from r4ec.local_models import model_identity
from r4ec.tuning.construction import DROPS, SETS, Sample, TeacherConfig, construct, examples
from r4ec.tuning.ranking import auc, threshold_at_rate

log = logging.getLogger(__name__)
STAMP = b"r4ec.part"


def teacher_config(settings: Settings) -> TeacherConfig:
    k = settings.knowledge
    generation = GenerationConfig(max_new_tokens=k.max_new_tokens, repetition_penalty=k.repetition_penalty,
                                  seed=settings.seed)  # fmt: skip
    return TeacherConfig(settings.domain, generation, settings.tuning.draws, k.sampling_temperature,
                         min_words=settings.tuning.min_answer_words, like_threshold=settings.tuning.like_threshold)


def manifest(settings: Settings, samples_digest: str, parts: int, held_out: list[str]) -> dict:
    k, t = settings.knowledge, settings.tuning
    dbt_vars = settings.dbt_vars()
    return {
        "dataset": settings.dataset, "teacher": model_identity(k.model), "backend": k.backend,
        "engine": served_engine(settings), "prompt_version": PROMPT_VERSION,
        "construction_version": CONSTRUCTION_VERSION, "max_new_tokens": k.max_new_tokens,
        "repetition_penalty": k.repetition_penalty, "draws": t.draws, "sampling_temperature": k.sampling_temperature,
        "held_out_fraction": t.held_out_fraction, "held_out": fingerprint.of_json(sorted(held_out)), "limit": t.limit,
        "entities": list(t.entities), "min_answer_words": t.min_answer_words, "like_threshold": t.like_threshold,
        "prediction_scored": True,  # every first prediction's P(yes) is in the parts
        "seed": settings.seed, "protocol": {name: dbt_vars[name] for name in PROTOCOL_VARS},
        "samples": samples_digest, "parts": parts, "partition_size": k.partition_size,
    }  # fmt: skip


def _schema() -> pa.Schema:
    strings = pa.list_(pa.string())
    return pa.schema([
        ("sample_id", pa.string()), ("entity", pa.string()), ("draw", pa.int32()), ("target_id", pa.string()),
        ("label", pa.int32()), ("answer", pa.string()), ("prediction", pa.bool_()), ("reasonable", pa.bool_()),
        ("feedback", pa.string()), ("refined", pa.string()), ("refined_prediction", pa.bool_()), ("p_like", pa.float64()), ("sets", strings),
        ("drop", pa.string()), ("examples", strings), ("replies", pa.list_(pa.struct([("step", pa.string()),
        ("reply", pa.string())]))), ("parse_failures", strings), ("tokens_in", pa.int64()), ("tokens_out", pa.int64()),
        ("llm_calls", pa.int32()), ("teacher", pa.string()), ("prompt_version", pa.string()), ("part", pa.int32()),
        ("generated_at", pa.timestamp("us", tz="UTC")),
    ])  # fmt: skip


def construct_part(spec: dict) -> dict:
    """One Spark task: Algorithm 1 on one part's samples, written as one parquet file."""
    log_to_stderr()
    settings = Settings.model_validate_json(spec["settings"])
    engines = spec.get("engines") or {}
    teacher = worker_backend(settings, spec["threads"], "actor", engines.get("actor"))
    cfg, samples = teacher_config(settings), [Sample(**s) for s in spec["samples"]]
    progress_path = Path(spec["out_dir"]) / PROGRESS_FOLDER / layout.part_name(spec["part"]).replace(".parquet", ".json")
    with PartProgress(spec["part"], len(samples), progress_path, cfg.steps(), settings.knowledge.progress_interval_s) as progress:
        runs = construct(teacher, samples, cfg, progress, pipelines(settings, engines))
    log.info("SFT construction part %d: %s", spec["part"], progress.line())
    provenance = {"teacher": teacher.model_id, "prompt_version": PROMPT_VERSION,
                  "construction_version": CONSTRUCTION_VERSION}
    now = datetime.now(UTC)
    rows = [
        {"sample_id": c.sample.sample_id, "entity": c.sample.entity, "draw": c.draw,
         "target_id": c.sample.target_id, "label": c.sample.label, "answer": c.answer,
         "prediction": c.prediction, "reasonable": c.reasonable, "feedback": c.feedback, "refined": c.refined,
         "refined_prediction": c.refined_prediction, "p_like": c.p_like, "sets": list(c.sets), "drop": c.drop,
         "examples": [json.dumps(asdict(e)) for e in examples(c, settings.domain, provenance)],
         "replies": c.chain.replies, "parse_failures": c.chain.parse_failures, "tokens_in": c.chain.tokens_in,
         "tokens_out": c.chain.tokens_out, "llm_calls": c.chain.llm_calls, "teacher": teacher.model_id,
         "prompt_version": PROMPT_VERSION, "part": spec["part"], "generated_at": now}
        for c in runs
    ]  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=_schema().with_metadata({STAMP: spec["stamp"].encode()}))
    write_parquet(table, Path(spec["out_dir"]) / layout.part_name(spec["part"]))
    return {"part": spec["part"], "llm_calls": sum(r["llm_calls"] for r in rows)}


@dataclass
class BuildSummary:
    out_dir: Path
    samples: int
    held_out: int
    parts_run: int
    llm_calls: int
    kept: dict[str, int]
    dropped: dict[str, int]
    seconds: float

    def line(self) -> str:
        kept = ", ".join(f"{n:,} {name}" for name, n in self.kept.items())
        dropped = ", ".join(f"{n:,} {why}" for why, n in sorted(self.dropped.items(), key=lambda kv: -kv[1])) or "none"
        return (f"SFT data: {self.samples:,} samples ({self.held_out:,} users held out), examples {kept}; dropped: "
                f"{dropped}; {self.parts_run} parts run now, {self.llm_calls:,} LLM calls, {self.seconds:.0f}s "
                f"-> {self.out_dir}")  # fmt: skip


def build_data(settings: Settings, overwrite: bool = False) -> BuildSummary:
    """Construct every sample's answers (resuming finished parts), then write the data sets and their card."""
    from r4ec.spark import run_parts, spark_session
    from r4ec.tuning.samples import construction_samples

    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    for entity in ("user", "item"):
        if not layout.prompt_inputs_path(settings, entity).is_file():
            raise KnowledgeError(f"{layout.prompt_inputs_path(settings, entity)} not found: run `r4ec marts build` first")
    samples, held_out = construction_samples(settings)
    size = settings.knowledge.partition_size
    parts = [samples[start : start + size] for start in range(0, len(samples), size)]
    as_rows = [[asdict(s) for s in part] for part in parts]
    wanted = manifest(settings, fingerprint.of_rows([r for part in as_rows for r in part]), len(parts), sorted(held_out))
    out_dir = layout.construction_dir(settings)
    _prepare(out_dir, wanted, overwrite)
    digest = fingerprint.of_json(wanted)
    stamps = [part_stamp(digest, [s.sample_id for s in part], rows) for part, rows in zip(parts, as_rows)]
    todo = [n for n in range(len(parts)) if fingerprint.read_stamp(out_dir / layout.part_name(n), STAMP) != stamps[n]]
    log.info("SFT construction: %d samples in %d parts, %d to run; %d users held out", len(samples), len(parts),
             len(todo), len(held_out))  # fmt: skip
    started, results = time.perf_counter(), []
    if todo:
        spark = spark_session(settings.knowledge.spark_master, "r4ec-tuning-build-data")
        threads = max(1, (os.cpu_count() or 1) // min(spark.sparkContext.defaultParallelism, len(todo)))
        with serving_engines(settings) as engines:
            specs = [{"settings": settings.model_dump_json(), "out_dir": str(out_dir), "threads": threads,
                      "engines": engines, "part": n, "samples": as_rows[n], "stamp": stamps[n]} for n in todo]  # fmt: skip
            pending = {out_dir / layout.part_name(n): len(parts[n]) for n in todo}
            results = run_parts(spark, construct_part, specs, pending, len(samples), "SFT construction",
                                progress_dir=out_dir / PROGRESS_FOLDER, interval=settings.knowledge.progress_interval_s)
        shutil.rmtree(out_dir / PROGRESS_FOLDER, ignore_errors=True)
    kept, dropped = write_datasets(out_dir, layout.sft_dir(settings), wanted, sorted(held_out))
    return BuildSummary(layout.sft_dir(settings), len(samples), len(held_out), len(results),
                        sum(r["llm_calls"] for r in results), kept, dropped, time.perf_counter() - started)  # fmt: skip


def _prepare(out_dir: Path, wanted: dict, overwrite: bool) -> None:
    path = out_dir / layout.MANIFEST
    found = json.loads(path.read_text()) if path.is_file() else None
    if found is not None and found != wanted:
        changed = sorted(k for k in wanted.keys() | found.keys() if wanted.get(k) != found.get(k))
        if not overwrite:
            raise KnowledgeError(f"{out_dir} holds construction answers from other inputs or settings "
                                 f"({', '.join(changed)}): pass --overwrite to build them again")  # fmt: skip
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=2, sort_keys=True))


def write_datasets(parts_dir: Path, out_dir: Path, about: dict, held_out: list[str]) -> tuple[dict, dict]:
    """reason / reflect / refine JSONL from the construction parts, and a card: sizes, drops, label balance."""
    table = pq.read_table(sorted(parts_dir.glob(layout.part_name_glob())))
    rows = table.to_pylist()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SETS:
        lines = [e for r in rows for e in r["examples"] if json.loads(e)["dataset"] == name]
        (out_dir / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))
    overall = _tally(rows)
    card = {
        "built_from": about, **overall, "drop_reasons": {k: DROPS[k] for k in overall["dropped"]},
        "by_entity": {entity: _tally([r for r in rows if r["entity"] == entity])
                      for entity in sorted({r["entity"] for r in rows})},
        "held_out_users": held_out,
    }  # fmt: skip
    (out_dir / "card.json").write_text(json.dumps(card, indent=1, sort_keys=True))
    return overall["examples"], overall["dropped"]


def _tally(rows: list[dict]) -> dict:
    """What a card says of some constructions: sizes, drops, label balance, verdicts, teacher accuracy, tokens."""
    predicted = [r for r in rows if r["prediction"] is not None]
    scored = [r for r in predicted if r["p_like"] is not None]
    liked = sum(r["label"] == 1 for r in scored) / max(1, len(scored))
    return {
        "constructions": len(rows),
        "examples": {name: sum(name in r["sets"] for r in rows) for name in SETS},  # one example per set kept
        "dropped": dict(Counter(r["drop"] for r in rows if r["drop"])),
        "label_balance": {name: dict(Counter(str(r["label"]) for r in rows if name in r["sets"])) for name in SETS},
        "reflect_verdicts": dict(Counter("reasonable" if r["reasonable"] else "not reasonable" for r in rows
                                         if "reflect" in r["sets"])),
        "teacher_accuracy": sum(r["prediction"] == bool(r["label"]) for r in predicted) / max(1, len(predicted)),
        "teacher_said_yes": sum(bool(r["prediction"]) for r in predicted),
        # how well the teacher's P(yes) ranks likes (0.5: not at all), and the P(yes) at which it would predict
        # "like" as often as these samples are liked: a value for tuning.like_threshold
        "teacher_auc_p_like": auc([r["p_like"] for r in scored], [r["label"] == 1 for r in scored]),
        "teacher_threshold_at_like_rate": threshold_at_rate([r["p_like"] for r in scored], liked),
        "tokens": {"in": sum(r["tokens_in"] for r in rows), "out": sum(r["tokens_out"] for r in rows)},
    }  # fmt: skip
