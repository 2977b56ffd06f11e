"""The encode job (DESIGN §4, §5): a knowledge run's parts -> vectors parts, one Spark task per part, with the encoder
of `r4ec/encoder.py`.

Each vectors part is stamped with the content hash of its knowledge part and the encoder's identity: a vectors part is
reused only while both match, a part whose knowledge part is gone is removed, and `_COMPLETE.json` is written last,
when every knowledge part of the run has its vectors. Feast registers only complete runs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from r4ec import fingerprint, layout
from r4ec.data.tables import write_parquet
from r4ec.encoder import EncoderError, TextEncoder, texts_of
from r4ec.local_models import ModelFilesError, encoder_identity

log = logging.getLogger(__name__)


STAMP = b"r4ec.vectors"  # parquet metadata key: what a vectors part was made from


def vectors_schema(entity: str, stamp: str | None = None) -> pa.Schema:
    """A vectors part's columns; with `stamp` (`vectors_stamp`), what the part was made from, in its metadata."""
    schema = pa.schema(
        [
            pa.field(f"{entity}_id", pa.string(), nullable=False),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("vector", pa.list_(pa.float32()), nullable=False),
            pa.field("quality", pa.string()),  # the knowledge row's: parsed | fallback
            pa.field("texts", pa.int32()),  # texts averaged into the vector (filter: the kept; text: the windows)
            pa.field("encoder", pa.string()),  # name@sha256 of the encoder's files
        ]
    )
    return schema if stamp is None else schema.with_metadata({STAMP: stamp.encode()})


def vectors_stamp(knowledge_part: Path, encoder: str) -> str:
    return fingerprint.of_json({"knowledge": fingerprint.of_file(knowledge_part), "encoder": encoder})


def stale_vectors(vectors: Path, knowledge: Path, encoder: str) -> list[str]:
    """The parts that keep `vectors` from being the knowledge's own under `encoder`: a knowledge part without a vectors
    part stamped from its content and that encoder, and a vectors part whose knowledge part is gone. A folder
    restored or copied beside knowledge made again since shows here, whatever its `_COMPLETE.json` says."""
    parts = {p.name: p for p in knowledge.glob("part-*.parquet")}
    stale = [name for name, part in sorted(parts.items())
             if fingerprint.read_stamp(vectors / name, STAMP) != vectors_stamp(part, encoder)]  # fmt: skip
    return stale + sorted(p.name for p in vectors.glob("part-*.parquet") if p.name not in parts)


_WORKER_ENCODERS: dict[str, TextEncoder] = {}


def encode_part(spec: dict) -> dict:
    """One Spark task: encode one knowledge part into one vectors part."""
    key = spec["encoder"] + spec["cache"]
    if key not in _WORKER_ENCODERS:
        _WORKER_ENCODERS[key] = TextEncoder(spec["encoder"], Path(spec["cache"]), spec["batch_size"])
    encoder = _WORKER_ENCODERS[key]
    entity = spec["entity"]
    rows = pq.read_table(spec["source"]).to_pylist()
    before = encoder.encoded
    groups = [texts_of(r, encoder.windows) for r in rows]
    vectors = encoder.encode_groups(groups)
    table = pa.Table.from_pylist(
        [
            {f"{entity}_id": r[f"{entity}_id"], "event_timestamp": r["event_timestamp"], "vector": v.tolist(),
             "quality": r["quality"], "texts": len(g), "encoder": encoder.identity}  # fmt: skip
            for r, g, v in zip(rows, groups, vectors)
        ],
        schema=vectors_schema(entity, spec["stamp"]),
    )
    write_parquet(table, Path(spec["target"]))
    return {"rows": len(rows), "encoded": encoder.encoded - before}


@dataclass
class EncodeSummary:
    target: Path
    encoder: str
    rows: int
    parts_run: int
    encoded: int
    seconds: float

    def line(self) -> str:
        return (
            f"{self.target.name}: {self.rows:,} vectors ({self.encoder}) at {self.target} "
            f"({self.parts_run} parts run now, {self.encoded:,} texts encoded, {self.seconds:.0f}s)"
        )


def _knowledge_parts(settings, entity: str) -> list[Path]:
    """The parts of a finished knowledge run; an unfinished run is refused (its vectors would be half a run)."""
    source = layout.knowledge_dir(settings, entity)
    parts = sorted(source.glob("part-*.parquet"))
    manifest = source / layout.MANIFEST
    if not parts or not manifest.is_file():
        raise EncoderError(f"{source}: no knowledge parts: run `r4ec knowledge generate` first")
    expected = json.loads(manifest.read_text()).get("parts")
    if expected is None:
        raise EncoderError(f"{source} was generated before runs recorded their inputs: regenerate it with "
                           "`r4ec knowledge generate --overwrite` (cached answers make that cheap)")  # fmt: skip
    expected += sum(json.loads(p.read_text())["parts"] for p in source.glob(layout.REFRESH_MANIFESTS))
    if len(parts) != expected:
        raise EncoderError(
            f"{source}: {len(parts)} of {expected} knowledge parts: finish the run with `r4ec knowledge generate` first"
        )
    return parts


def _check_unique(target: Path, entity: str) -> int:
    """Rows of the run's vectors; two rows for one (entity, as-of time) would make point-in-time joins arbitrary."""
    import duckdb

    key = f"{entity}_id, event_timestamp"
    ((total, distinct),) = duckdb.sql(
        f"select count(*), count(distinct ({key})) from read_parquet('{target}/part-*.parquet')"
    ).fetchall()
    if total != distinct:
        raise EncoderError(f"{target}: {total - distinct} duplicate ({key}) rows: regenerate the knowledge with "
                           "`r4ec knowledge generate --overwrite`")  # fmt: skip
    return total


def encode_knowledge(settings, entity: str) -> EncodeSummary:
    """Encode every knowledge part whose vectors are missing or stale; remove vectors whose knowledge part is gone."""
    from r4ec.spark import run_parts, spark_session

    k = settings.knowledge
    parts = _knowledge_parts(settings, entity)
    try:
        identity = encoder_identity(k.encoder)
    except ModelFilesError as error:
        raise EncoderError(str(error)) from None
    target = layout.vectors_dir(settings, entity)
    target.mkdir(parents=True, exist_ok=True)
    (target / layout.COMPLETE).unlink(missing_ok=True)
    stale = set(stale_vectors(target, layout.knowledge_dir(settings, entity), identity))
    for orphan in sorted(stale - {p.name for p in parts}):
        log.warning("%s: removing vectors of a knowledge part that no longer exists", target / orphan)
        (target / orphan).unlink()
    for leftover in target.glob("*.partial"):
        leftover.unlink()
    todo = [p for p in parts if p.name in stale]
    started, encoded = time.perf_counter(), 0
    if todo:
        spark = spark_session(k.spark_master, f"r4ec-encode-{entity}-knowledge")
        common = {"entity": entity, "encoder": k.encoder, "batch_size": k.encoder_batch_size,
                  "cache": str(layout.vector_cache_path(settings))}  # fmt: skip
        specs = [{**common, "source": str(p), "target": str(target / p.name), "stamp": vectors_stamp(p, identity)} for p in todo]
        rows_in = {p: pq.read_metadata(p).num_rows for p in parts}
        outputs = {target / p.name: rows_in[p] for p in todo}
        encoded = sum(r["encoded"] for r in run_parts(spark, encode_part, specs, outputs, sum(rows_in.values()), target.name))
    rows = mark_complete(target, entity, identity)
    return EncodeSummary(target, identity.split("@")[0], rows, len(todo), encoded, time.perf_counter() - started)


def mark_complete(target: Path, entity: str, encoder: str) -> int:
    """Write `_COMPLETE.json` (encoder, rows, each part's content hash) once the vectors are whole and unique: Feast
    registers the run from then on. Returns the rows."""
    rows = _check_unique(target, entity)
    parts = {p.name: fingerprint.of_file(p) for p in sorted(target.glob("part-*.parquet"))}
    complete = {"encoder": encoder, "rows": rows, "parts": parts}
    (target / layout.COMPLETE).write_text(json.dumps(complete, indent=1, sort_keys=True))
    return rows
