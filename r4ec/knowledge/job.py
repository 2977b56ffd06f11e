"""Generate user or item knowledge as a Spark job (DESIGN §4).

The entities are cut into parts of `partition_size`; each Spark task loads the model once per worker process,
runs the loop on its part in batches and writes `part-NNNNN.parquet` when it is done (written under a temporary
name, then renamed). A `_manifest.json` records what decides the answers: the settings, the model and adapters by
content hash, the prompt version, the protocol and the content hash of the prompt-input rows. A run whose manifest
differs is refused unless asked to overwrite (which also removes the run's vectors). A killed run resumes: a part
is skipped only when its own stamp (manifest, ids, the hash of its input rows) is exactly the one it would get now.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from r4ec import fingerprint, layout
from r4ec.config import Settings
from r4ec.console import FORMAT
from r4ec.data.tables import write_parquet
from r4ec.knowledge import KnowledgeError, llamacpp
from r4ec.knowledge.backends import GenerationConfig, adapter_names, build_backend
from r4ec.knowledge.cache import AnswerCache, CachedBackend
from r4ec.knowledge.loop import Chain, LoopConfig, run_loop
from r4ec.knowledge.progress import FOLDER as PROGRESS_FOLDER
from r4ec.knowledge.progress import PartProgress
from r4ec.knowledge.prompts import PROMPT_VERSION
from r4ec.local_models import SMOLLM2, adapter_identity, model_identity, resolve_dtype, smollm2_checkpoint

log = logging.getLogger(__name__)


def _vectors_stale(settings: Settings, entity: str) -> None:
    """The knowledge changed: no encoder's vectors of it are complete until `knowledge encode` has run again."""
    for vectors in layout.all_vectors_dirs(settings, entity):
        (vectors / layout.COMPLETE).unlink(missing_ok=True)


def output_schema(entity: str) -> pa.Schema:
    strings = pa.list_(pa.string())
    return pa.schema(
        [
            pa.field(f"{entity}_id", pa.string(), nullable=False),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),  # as-of time of the inputs
            pa.field("knowledge", pa.string()),  # the final text
            pa.field("answers", strings),  # the actor's answers: reason, then each refinement (filter: k samples)
            pa.field("judgements", strings),  # reasonable / not reasonable / null (no verdict), per reflection
            pa.field("reflections", strings),  # the reflector's feedback, per reflection
            pa.field("kept_answers", strings),  # filter: the answers judged reasonable (only those)
            pa.field("quality", pa.string()),  # parsed | fallback (a raw reply or unjudged answers stand in)
            pa.field("replies", pa.list_(pa.struct([("step", pa.string()), ("reply", pa.string())]))),
            pa.field("parse_failures", strings),  # steps whose reply did not parse, even when asked strictly
            pa.field("rounds_used", pa.int32()),  # refinements made
            pa.field("strategy", pa.string()),
            pa.field("model", pa.string()),
            pa.field("reflector_model", pa.string()),  # the model that judged, where it is not the actor's
            pa.field("actor_adapter", pa.string()),
            pa.field("reflector_adapter", pa.string()),
            pa.field("prompt_version", pa.string()),
            pa.field("tokens_in", pa.int64()),
            pa.field("tokens_out", pa.int64()),
            pa.field("llm_calls", pa.int32()),  # replies generated in this run (not read from the cache)
            pa.field("generated_tokens", pa.int64()),  # tokens_out of those
            pa.field("prompt_tokens_computed", pa.int64()),  # tokens_in of those, less the engine's prefix-cache hits
            pa.field("replies_cut", pa.int32()),  # of those, replies that ran into max_new_tokens
            pa.field("part", pa.int32()),
            pa.field("part_seconds", pa.float64()),  # wall time of the whole part, the same on each of its rows
            pa.field("generated_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def loop_config(settings: Settings, entity: str) -> LoopConfig:
    k = settings.knowledge
    actor, reflector = adapter_names(k)
    generation = GenerationConfig(
        max_new_tokens=k.max_new_tokens, repetition_penalty=k.repetition_penalty, seed=settings.seed
    )
    return LoopConfig(entity, settings.domain, k.strategy, k.rounds, k.samples, actor, reflector, generation,
                      k.sampling_temperature, k.prefill)  # fmt: skip


PROTOCOL_VARS = ("protocol", "llm_history_length", "train_fraction", "history_length", "prompt_history_length",
                 "valid_strategy", "valid_fraction", "kar_test_user_fraction", "kar_history_limit", "positive_threshold")  # fmt: skip


def manifest(settings: Settings, entity: str, inputs_digest: str, parts: int) -> dict:
    """What decides the answers and the parts; a folder holds one such run."""
    k = settings.knowledge
    dbt_vars = settings.dbt_vars()
    return {
        "dataset": settings.dataset, "entity": entity, "strategy": k.strategy, "rounds": k.rounds,
        "samples": k.samples, **_llm(settings), "prompt_version": PROMPT_VERSION,
        "limit": k.limit, "partition_size": k.partition_size, "seed": settings.seed,
        "protocol": {name: dbt_vars[name] for name in PROTOCOL_VARS},
        "inputs": inputs_digest, "parts": parts,
    }  # fmt: skip


LLM_ENTRIES = ("backend", "model", "reflector_model", "dtype", "engine", "server", "actor_adapter", "reflector_adapter",
               "max_new_tokens", "repetition_penalty", "prefill", "sampling_temperature")  # fmt: skip


def _llm(settings: Settings) -> dict:
    """Who answered and how: all None for the text strategy, which asks no one (a model named there would be a lie)."""
    k = settings.knowledge
    if k.strategy == "text":
        return dict.fromkeys(LLM_ENTRIES)
    return {
        "backend": k.backend, "model": model_identity(k.model),
        "reflector_model": model_identity(k.reflector_model) if k.reflector_model else None,
        "dtype": resolve_dtype(k.dtype, k.device) if k.backend == "transformers" else None if k.backend == "llama.cpp" else k.dtype,
        "engine": served_engine(settings),
        "server": k.openai_base_url if k.backend == "openai" else None,
        "actor_adapter": _adapter(settings, k.actor_adapter), "reflector_adapter": _adapter(settings, k.reflector_adapter),
        "max_new_tokens": k.max_new_tokens, "repetition_penalty": k.repetition_penalty, "prefill": k.prefill,
        "sampling_temperature": k.sampling_temperature,
    }  # fmt: skip


def served_engine(settings: Settings) -> str | None:
    """llama.cpp: the engine build and the type the models are served in (both change the answers)."""
    k = settings.knowledge
    if k.backend != "llama.cpp":
        return None
    quantizations = {llamacpp.served_quantization(m, k.quantization) for m in (k.model, k.reflector_model) if m}
    return f"{llamacpp.engine_identity()} {'/'.join(sorted(quantizations))}"


def _adapter(settings: Settings, path: Path | None) -> str | None:
    """A local adapter by content; one a remote server holds (openai backend) can only be named."""
    if path is None:
        return None
    return str(path) if settings.knowledge.backend == "openai" else adapter_identity(path)


def select_entities(ids: list[str], limit: int | None, seed: int) -> list[str]:
    """All ids, or a seeded sample of `limit` of them, in their original order."""
    if limit is None or limit >= len(ids):
        return list(ids)
    rank = {i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in ids}
    chosen = set(sorted(ids, key=rank.__getitem__)[:limit])
    return [i for i in ids if i in chosen]


STAMP = b"r4ec.part"  # parquet metadata key of a part's stamp


def part_stamp(run_digest: str, ids: list[str], rows: list[dict]) -> str:
    """What one part was made from: the run's manifest, its ids in order, and the content of their input rows."""
    return fingerprint.of_json({"run": run_digest, "ids": ids, "inputs": fingerprint.of_rows(rows)})


# ---- on a worker -----------------------------------------------------------------------------------------------------

_WORKER_BACKENDS: dict[str, CachedBackend] = {}  # one loaded model per worker process


def worker_backend(settings: Settings, threads: int, role: str, engine: dict | None) -> CachedBackend:
    """The role's backend (actor or reflector) behind the answer cache; `engine`: the llama.cpp server it uses."""
    k = settings.knowledge
    if role == "reflector" and (k.reflector_model or k.model) == k.model:
        role = "actor"
    key = json.dumps([k.model_dump_json(), str(settings.answer_cache_path), role, engine])
    if key not in _WORKER_BACKENDS:
        if role == "reflector":
            settings = settings.model_copy(update={"knowledge": k.model_copy(update={"model": k.reflector_model})})
        backend = build_backend(settings, threads, engine)
        _WORKER_BACKENDS[key] = CachedBackend(backend, AnswerCache(settings.answer_cache_path))
    return _WORKER_BACKENDS[key]


def pipelines(settings: Settings, engines: dict) -> int:
    """Entities in flight at once: a server that batches continuously gets one pipeline per slot; a local model
    batches each step itself (one pipeline)."""
    k = settings.knowledge
    if k.backend == "llama.cpp" and engines:  # none for the text strategy
        return engines["actor"]["slots"]
    return k.openai_concurrency if k.backend == "openai" else 1


def log_to_stderr() -> None:
    """A Spark worker's stderr is its task log: r4ec's INFO lines (progress) go there."""
    logger = logging.getLogger("r4ec")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _run_columns(settings: Settings, cfg: LoopConfig, model_id: str) -> dict:
    """The columns every row of a part shares: what made it, models and adapters by content."""
    k = settings.knowledge
    return {
        "strategy": cfg.strategy,
        "model": model_id,
        "actor_adapter": _adapter(settings, k.actor_adapter),
        "reflector_adapter": _adapter(settings, k.reflector_adapter),
        "prompt_version": PROMPT_VERSION,
    }


def _record(chain: Chain, entity: str) -> dict:
    return {
        f"{entity}_id": chain.inputs[f"{entity}_id"],
        "event_timestamp": chain.inputs["event_timestamp"],
        "knowledge": chain.knowledge,
        "answers": chain.answers,
        "judgements": chain.judgements,
        "reflections": chain.reflections,
        "kept_answers": chain.kept,
        "quality": chain.quality,
        "replies": chain.replies,
        "parse_failures": chain.parse_failures,
        "rounds_used": chain.refinements,
        "tokens_in": chain.tokens_in,
        "tokens_out": chain.tokens_out,
        "llm_calls": chain.llm_calls,
        "generated_tokens": chain.generated_tokens,
        "prompt_tokens_computed": chain.computed_prompt_tokens,
        "replies_cut": chain.replies_cut,
    }


def run_part(spec: dict) -> dict:
    """One Spark task: the loop over one part's entities, written as one parquet file."""
    log_to_stderr()
    settings = Settings.model_validate_json(spec["settings"])
    entity, part = spec["entity"], spec["part"]
    engines = spec.get("engines") or {}
    backend = reflector = None  # the text strategy asks no LLM
    if settings.knowledge.strategy != "text":
        backend = worker_backend(settings, spec["threads"], "actor", engines.get("actor"))
        reflector = worker_backend(settings, spec["threads"], "reflector", engines.get("reflector"))
    id_column = f"{entity}_id"
    table = pq.read_table(spec["source"], filters=[(id_column, "in", spec["ids"])])
    by_id = {row[id_column]: row for row in table.to_pylist()}
    cfg = loop_config(settings, entity)
    progress_path = Path(spec["out_dir"]) / PROGRESS_FOLDER / spec["name"].replace(".parquet", ".json")
    started = time.perf_counter()
    interval = settings.knowledge.progress_interval_s
    with PartProgress(part, len(spec["ids"]), progress_path, cfg.steps(), interval) as progress:
        chains = run_loop(backend, [by_id[i] for i in spec["ids"]], cfg, reflector, progress, pipelines(settings, engines))
    seconds = time.perf_counter() - started
    log.info("%s knowledge part %d: %s", entity, part, progress.line())
    judge = reflector.model_id if reflector is not backend else None
    shared = {**_run_columns(settings, cfg, backend.model_id if backend else None), "reflector_model": judge, "part": part, "part_seconds": seconds,
              "generated_at": datetime.now(UTC)}  # fmt: skip
    records = [{**_record(c, entity), **shared} for c in chains]
    schema = output_schema(entity).with_metadata({STAMP: spec["stamp"].encode()})
    write_parquet(pa.Table.from_pylist(records, schema=schema), Path(spec["out_dir"]) / spec["name"])
    return {"part": part, "entities": len(chains), "llm_calls": sum(c.llm_calls for c in chains), "seconds": seconds}


# ---- on the driver ---------------------------------------------------------------------------------------------------


@dataclass
class JobSummary:
    entity: str
    out_dir: Path
    entities: int
    parts: int
    parts_run: int
    llm_calls: int
    seconds: float

    def line(self) -> str:
        return (
            f"{self.entity}_knowledge: {self.entities:,} entities in {self.parts} parts at {self.out_dir} "
            f"({self.parts_run} parts run now, {self.llm_calls:,} LLM calls, {self.seconds:.0f}s)"
        )


def _prepare_output(settings: Settings, entity: str, wanted: dict, overwrite: bool) -> Path:
    """The run's folder, holding the wanted manifest; another run's folder is refused, or removed with its vectors."""
    out_dir = layout.knowledge_dir(settings, entity)
    path = out_dir / layout.MANIFEST
    found = json.loads(path.read_text()) if path.is_file() else None
    if found is None and any(out_dir.glob("part-*.parquet")):
        found = {}  # parts without a manifest: nothing says what they were built from
    if found is not None and found != wanted:
        if not overwrite:
            changed = sorted(k for k in wanted.keys() | found.keys() if wanted.get(k) != found.get(k))
            raise KnowledgeError(
                f"{out_dir} holds a run built from other inputs or settings ({', '.join(changed)}): pass --overwrite "
                "to regenerate it (unchanged prompts come from the answer cache)"
            )
        log.warning("%s: replacing a run built from other inputs or settings, and its vectors", out_dir)
        shutil.rmtree(out_dir)
        for vectors in layout.all_vectors_dirs(settings, entity):
            shutil.rmtree(vectors, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=2, sort_keys=True))
    for leftover in out_dir.glob("*.partial"):  # a part a killed run was writing
        leftover.unlink()
    return out_dir


def serving_engines(settings: Settings):
    """The llama.cpp servers the job's tasks talk to, for the length of the job; other backends need none."""
    import contextlib

    if settings.knowledge.backend != "llama.cpp" or settings.knowledge.strategy == "text":
        return contextlib.nullcontext({})
    return llamacpp.serving(settings, settings.logs_dir)


def generate_knowledge(settings: Settings, entity: str, overwrite: bool = False) -> JobSummary:
    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})  # workers may run elsewhere
    source = layout.prompt_inputs_path(settings, entity)
    if not source.is_file():
        raise KnowledgeError(f"{source} not found: run `r4ec marts build` first")
    k = settings.knowledge
    inputs = read_inputs(source, entity)
    ids = select_entities(list(inputs), k.limit, settings.seed)
    parts = [ids[start : start + k.partition_size] for start in range(0, len(ids), k.partition_size)]
    wanted = manifest(settings, entity, fingerprint.of_rows([inputs[i] for i in ids]), len(parts))
    out_dir = _prepare_output(settings, entity, wanted, overwrite)
    log.info("%s knowledge: %d entities, %d parts (%s, %s)", entity, len(ids), len(parts), k.strategy, k.model)
    names = [layout.part_name(n) for n in range(len(parts))]
    return _run_parts(settings, entity, out_dir, fingerprint.of_json(wanted), names, parts, source, inputs)


def refresh_knowledge(settings: Settings, entity: str) -> JobSummary:
    """Knowledge for the entities the refresh interval changed (the `<entity>_refresh_inputs` mart), appended to
    the settings' run as parts named after the interval's end, every row stamped with that end: earlier samples
    keep the knowledge they had. A sampled run refreshes only its own sample. Re-running an interval replaces its
    parts; the run's other parts are untouched."""
    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    if settings.refresh_end is None:
        raise KnowledgeError("a refresh needs its interval: give --start and --end (refresh_start, refresh_end)")
    out_dir = layout.knowledge_dir(settings, entity)
    base = _base_manifest(settings, entity, out_dir)
    source = layout.refresh_inputs_path(settings, entity)
    inputs = _refresh_inputs(settings, entity, source)
    changed = len(inputs)
    if settings.knowledge.limit is not None:
        sample = set(pq.read_table(list(out_dir.glob(layout.part_name_glob())), columns=[f"{entity}_id"]).column(0).to_pylist())
        inputs = {i: row for i, row in inputs.items() if i in sample}
    ids = list(inputs)
    size = settings.knowledge.partition_size
    parts = [ids[start : start + size] for start in range(0, len(ids), size)]
    wanted = {**manifest(settings, entity, fingerprint.of_rows(list(inputs.values())), len(parts)),
              "refresh": {"start": settings.refresh_start.isoformat(), "end": settings.refresh_end.isoformat()},
              "base": fingerprint.of_json(base)}  # fmt: skip
    tag = layout.refresh_tag(settings.refresh_end)
    names = [layout.part_name(n, tag) for n in range(len(parts))]
    for stale in set(out_dir.glob(layout.part_name_glob(tag))) - {out_dir / name for name in names}:
        stale.unlink()  # an earlier attempt at this interval cut into more parts: the vectors no longer match
        _vectors_stale(settings, entity)
    (out_dir / layout.refresh_manifest_name(tag)).write_text(json.dumps(wanted, indent=2, sort_keys=True))
    sampled = f", {len(ids)} of them in the run's sample" if settings.knowledge.limit is not None else ""
    log.info("%s knowledge refresh %s to %s: %d %ss changed%s; %d parts", entity, settings.refresh_start,
             settings.refresh_end, changed, entity, sampled, len(parts))  # fmt: skip
    return _run_parts(settings, entity, out_dir, fingerprint.of_json(wanted), names, parts, source, inputs)


def read_inputs(source: Path, entity: str) -> dict[str, dict]:
    """Prompt-input rows by id; dbt writes an empty mart as one all-null row, which is no entity."""
    id_column = f"{entity}_id"
    return {row[id_column]: row for row in pq.read_table(source).to_pylist() if row[id_column] is not None}


def _base_manifest(settings: Settings, entity: str, out_dir: Path) -> dict:
    """The run a refresh appends to, which must exist and agree with the settings in all but its inputs: a refresh
    with another model or prompt would make the run a mix."""
    path = out_dir / layout.MANIFEST
    if not path.is_file():
        raise KnowledgeError(f"{out_dir}: no knowledge run to refresh: run `r4ec knowledge generate` (or r4ec_build) first")
    base = json.loads(path.read_text())
    now = manifest(settings, entity, base.get("inputs"), base.get("parts"))
    changed = sorted(key for key in now.keys() | base.keys() if now.get(key) != base.get(key))
    if changed:
        raise KnowledgeError(f"{out_dir} was generated with other settings ({', '.join(changed)}): a refresh appends "
                             "to a run with the settings it was built with")  # fmt: skip
    return base


def _refresh_inputs(settings: Settings, entity: str, source: Path) -> dict[str, dict]:
    """The refresh mart's rows, after checking that the marts were built for this very interval."""
    from r4ec.marts import built_with

    built = built_with(settings.marts_dir) or {}
    window = (built.get("refresh_start"), built.get("refresh_end"))
    if not source.is_file() or window != (settings.refresh_start, settings.refresh_end):
        found = "no refresh interval" if window[0] is None else f"the interval {window[0]} to {window[1]}"
        raise KnowledgeError(f"the marts in {settings.marts_dir} hold {found}: run `r4ec marts build --refresh-start "
                             f"{settings.refresh_start:%Y-%m-%dT%H:%M:%S} --refresh-end {settings.refresh_end:%Y-%m-%dT%H:%M:%S}` first")  # fmt: skip
    return read_inputs(source, entity)


def _run_parts(
    settings: Settings, entity: str, out_dir: Path, run_digest: str, names: list[str], parts: list[list[str]],
    source: Path, inputs: dict[str, dict],
) -> JobSummary:  # fmt: skip
    """Run the loop on every part (file `names[n]` holds the ids `parts[n]`, their input rows in `source`) whose stamp
    is not the one it would get now; a part from other inputs is removed before anything runs, so it is never left
    to be read."""
    k = settings.knowledge
    stamps = [part_stamp(run_digest, part, [inputs[i] for i in part]) for part in parts]
    todo = [n for n in range(len(parts)) if fingerprint.read_stamp(out_dir / names[n], STAMP) != stamps[n]]
    for n in todo:
        (out_dir / names[n]).unlink(missing_ok=True)
    if todo:  # its vectors no longer match it until `knowledge encode` has run again
        _vectors_stale(settings, entity)
    log.info("%s knowledge: %d of %d parts to run", entity, len(todo), len(parts))
    started = time.perf_counter()
    results: list[dict] = []
    if todo:
        from r4ec.spark import run_parts, spark_session

        if k.backend == "transformers" and k.model == SMOLLM2 and k.strategy != "text":
            smollm2_checkpoint(settings.models_dir, resolve_dtype(k.dtype, k.device))  # once here, not in every worker
        spark = spark_session(k.spark_master, f"r4ec-generate-{entity}-knowledge")
        threads = max(1, (os.cpu_count() or 1) // min(spark.sparkContext.defaultParallelism, len(todo)))
        with serving_engines(settings) as engines:
            common = {"settings": settings.model_dump_json(), "entity": entity, "out_dir": str(out_dir),
                      "source": str(source), "threads": threads, "engines": engines}  # fmt: skip
            specs = [{**common, "part": n, "name": names[n], "ids": parts[n], "stamp": stamps[n]} for n in todo]
            pending = {out_dir / spec["name"]: len(spec["ids"]) for spec in specs}
            results = run_parts(
                spark, run_part, specs, pending, sum(map(len, parts)), f"{entity}_knowledge",
                progress_dir=out_dir / PROGRESS_FOLDER, interval=k.progress_interval_s,
            )  # fmt: skip
    shutil.rmtree(out_dir / PROGRESS_FOLDER, ignore_errors=True)
    return JobSummary(
        entity, out_dir, sum(map(len, parts)), len(parts), len(results), sum(r["llm_calls"] for r in results),
        time.perf_counter() - started,
    )  # fmt: skip
