"""The knowledge-alone probe on synthetic training sets whose labels the vectors do (or do not) explain."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from r4ec.features.store import TRAINING_SET_STAMP
from r4ec.ranking.probe import probe, probe_training_set
from r4ec.ranking.report import write_probe


def training_set(rows: int, seed: int, missing: float = 0.1) -> pa.Table:
    """Labels decided by whether the user's vector points the item's way: neither vector alone says anything."""
    rng = np.random.default_rng(seed)
    users, items = rng.normal(size=(50, 8)), rng.normal(size=(60, 8))
    u, i = rng.integers(0, 50, rows), rng.integers(0, 60, rows)
    label = ((users[u] * items[i]).sum(1) > 0).astype(np.int64)
    gone = rng.random(rows) < missing
    vectors = lambda m, ids: pa.array([None if g else list(m[k]) for k, g in zip(ids, gone)], pa.list_(pa.float32()))  # noqa: E731
    split = np.where(np.arange(rows) < rows * 0.8, "train", "test")
    return pa.table({"split": split, "label": label, "user_knowledge_vector": vectors(users, u),
                     "item_knowledge_vector": vectors(items, i)})  # fmt: skip


def test_a_match_between_user_and_item_shows_only_when_both_are_seen():
    result = probe(training_set(4000, seed=1))
    assert result["test_samples"] == 800 and 0.8 * 800 < result["test_with_user_vector"] < 800
    assert result["both"]["auc"] > 0.8  # the product of the two vectors carries the label
    assert max(result["user"]["auc"], result["item"]["auc"]) < result["both"]["auc"] - 0.15  # one alone: a user's or
    # an item's share of positives at most


def test_results_are_kept_per_training_set_and_redone_when_it_changes(tmp_path):
    sets, reports = tmp_path / "training", tmp_path / "reports"
    sets.mkdir()
    path = sets / "iterative.parquet"
    pq.write_table(training_set(1000, seed=2).replace_schema_metadata({TRAINING_SET_STAMP: b"one"}), path)
    pq.write_table(pa.table({"split": ["train"], "label": [1]}), sets / "base.parquet")  # no knowledge: not probed
    first = probe_training_set(path, reports)
    cached = reports / "iterative" / "result.json"
    before = cached.stat().st_mtime_ns
    assert probe_training_set(path, reports) == first and cached.stat().st_mtime_ns == before
    pq.write_table(training_set(1000, seed=3).replace_schema_metadata({TRAINING_SET_STAMP: b"two"}), path)
    assert probe_training_set(path, reports) != first  # another set: computed again, not read back

    written = write_probe(sets, reports, "ml-100k")
    table = written.read_text()
    assert "| iterative | 200 |" in table and "base" not in table.split("|---|")[1]


def test_views_without_vectors_are_not_applicable_rather_than_errors():
    table = training_set(400, seed=4)
    none = pa.nulls(table.num_rows, pa.list_(pa.float32()))
    no_users = table.set_column(table.schema.get_field_index("user_knowledge_vector"), "user_knowledge_vector", none)
    result = probe(no_users)
    assert (result["user"], result["both"], result["train_with_user_vector"]) == (None, None, 0)
    assert 0 <= result["item"]["auc"] <= 1
    nothing = no_users.set_column(no_users.schema.get_field_index("item_knowledge_vector"), "item_knowledge_vector", none)
    assert [probe(nothing)[view] for view in ("user", "item", "both")] == [None, None, None]


def test_a_run_whose_training_set_is_not_here_is_shown_from_the_result_kept_for_its_stamp(tmp_path):
    sets, reports, artifacts = tmp_path / "training", tmp_path / "reports", tmp_path / "artifacts"
    sets.mkdir()
    path = sets / "iterative.parquet"
    pq.write_table(training_set(1000, seed=2).replace_schema_metadata({TRAINING_SET_STAMP: b"one"}), path)
    computed = write_probe(sets, reports, "ml-100k").read_text()
    path.unlink()  # a fresh machine: the training runs and the probe's results came back from the archive, not the set

    def trained_on(stamp: str) -> None:
        run = artifacts / "din-iterative-attention-seed1"
        run.mkdir(parents=True, exist_ok=True)
        config = {"feature_service": "iterative", "knowledge_run": {"name": "iterative"}, "training_set_fingerprint": stamp}
        (run / "config.json").write_text(json.dumps(config))
        (run / "metrics.json").write_text("{}")

    assert write_probe(sets, reports, "ml-100k") is None  # no set here, no runs to vouch for the kept result
    trained_on("one")
    assert write_probe(sets, reports, "ml-100k", artifacts).read_text() == computed
    trained_on("two")  # the rows were trained on another set: the kept result is not theirs
    assert write_probe(sets, reports, "ml-100k", artifacts) is None
    pq.write_table(training_set(1000, seed=2).replace_schema_metadata({TRAINING_SET_STAMP: b"one"}), path)
    marked = write_probe(sets, reports, "ml-100k", artifacts).read_text()  # the set here is not the rows' one
    assert "| iterative † | 200 |" in marked and "†: the training set probed is not the one" in marked
    trained_on("one")
    assert "†" not in write_probe(sets, reports, "ml-100k", artifacts).read_text()
