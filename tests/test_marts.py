"""The real dbt build on ml-100k and on small ML-1M / Amazon format files, checked against a plain-Python
reading of the protocol (DESIGN §3)."""

from __future__ import annotations

import hashlib
import math
import shutil
from collections import defaultdict
from decimal import Decimal

import duckdb
import pyarrow.parquet as pq
import pytest

from r4ec.marts import MartsError, build_marts, built_with, run_dbt, split_counts

pytestmark = pytest.mark.integration


def mart(settings, name):
    return pq.read_table(settings.marts_dir / f"{name}.parquet").to_pylist()


def hash_fraction(*values) -> float:
    """dbt/macros/hash_fraction.sql in Python: the first 8 hex digits of md5('seed:value:...') over 2^32."""
    return int(hashlib.md5(":".join(map(str, values)).encode()).hexdigest()[:8], 16) / 4294967296


def expected_samples(ratings, threshold, history_length=10, llm_history=11, train_fraction=0.8,
                     valid_strategy="temporal", valid_fraction=0.1, seed=42):  # fmt: skip
    """The protocol, written out plainly: sample_id -> (item, label, split, history item ids)."""
    by_user = defaultdict(list)
    for order, (user, item, rating, stamp) in enumerate(ratings):
        by_user[str(user)].append((stamp // 86400, order, str(item), rating))
    samples = {}
    for user, rows in by_user.items():
        rows.sort()  # (day, file order): the stable day-truncated ordering
        n = len(rows)
        split_at = math.floor(train_fraction * n)
        train_positions = max(0, split_at - llm_history + 1)
        held_out = math.ceil(Decimal(str(valid_fraction)) * train_positions)  # 10 % of 30 is 3, not 3.0000000000000004
        for position in range(llm_history, n):
            split = "train" if position <= split_at else "test"
            if split == "train" and {
                "temporal": position > split_at - held_out,  # the last ceil(10 %) of the user's train positions
                "last": position == split_at,  # the last train position of each user
                "fraction": hash_fraction(seed, user, position) < valid_fraction,
            }[valid_strategy]:
                split = "valid"
            history = [item for _, _, item, _ in rows[max(0, position - history_length) : position]]
            _, _, item, rating = rows[position]
            samples[f"{user}:{position}"] = (item, int(rating > threshold), split, history)
    return samples


def samples_of(settings):
    return {r["sample_id"]: (r["item_id"], r["label"], r["split"], r["history_item_ids"]) for r in mart(settings, "ctr_samples")}


def test_ml100k_has_the_papers_sample_count(ml100k):
    counts = split_counts(ml100k.marts_dir)
    assert sum(count for count, _ in counts.values()) == 100_000 - 943 * 11 == 89_627
    print("ml-100k splits:", {split: f"{count:,} ({ratio:.1%} positive)" for split, (count, ratio) in counts.items()})
    # temporal validation: ceil(10 %) of each user's train positions, 7,408 samples rather than 943 (one per user)
    assert {split: count for split, (count, _) in counts.items()} == {"train": 62_781, "valid": 7_408, "test": 19_438}
    for _, ratio in counts.values():
        assert 0.5 < ratio < 0.6  # ml-100k: a little over half of ratings are 4 or 5


def test_ml100k_samples_follow_the_protocol(ml100k):
    rows = pq.read_table(ml100k.raw_dir / "ratings.parquet").to_pylist()
    ratings = [(r["user_id"], r["item_id"], r["rating"], r["timestamp"]) for r in rows]
    assert samples_of(ml100k) == expected_samples(ratings, threshold=3.0)


@pytest.mark.parametrize("valid_strategy", ["temporal", "last", "fraction"])
def test_small_ml1m_samples_follow_the_protocol(ml1m, ml1m_files, tmp_path, valid_strategy):
    ratings = ml1m_files[1]
    # the files are meant to hold same-day ratings whose raw times disagree with file order
    days = defaultdict(list)
    for user, _, _, stamp in ratings:
        days[(user, stamp // 86400)].append(stamp)
    assert any(stamps != sorted(stamps) for stamps in days.values())
    settings = ml1m
    if valid_strategy != ml1m.valid_strategy:  # the fixture is the default, temporal; build the others
        settings = ml1m.model_copy(update={"data_dir": tmp_path, "valid_strategy": valid_strategy})
        shutil.copytree(ml1m.raw_dir, settings.raw_dir)
        build_marts(settings)  # every model and data test, the item prompts' included
    assert samples_of(settings) == expected_samples(ratings, threshold=3.0, valid_strategy=valid_strategy)
    # the item prompts show training-period ratings only, valid ones never, wherever the strategy puts them
    splits = {(s["user_id"], s["item_id"]): s["split"] for s in mart(settings, "ctr_samples")}
    shown = [(p[f"{role}_user_id"], h["item_id"]) for p in mart(settings, "item_prompt_inputs")
             for role in ("liker", "disliker") for h in p[f"{role}_history"]]  # fmt: skip
    assert shown and all(splits.get(key) in (None, "train") for key in shown)  # None: an LLM-history rating


def test_history_attributes_are_aligned_and_before_the_sample(ml100k):
    con = duckdb.connect()
    bad = con.sql(
        f"""
        select count(*) from read_parquet('{ml100k.marts_dir}/ctr_samples.parquet')
        where len(history_categories) != len(history_item_ids) or len(history_ratings) != len(history_item_ids)
           or history_length != 10
        """
    ).fetchall()[0][0]
    assert bad == 0


def test_user_history_row_at_a_sample_is_that_samples_history(ml100k):
    """The point-in-time contract Feast relies on: the row stamped at a sample's time holds its K previous items."""
    con = duckdb.connect()
    mismatches = con.sql(
        f"""
        select count(*)
        from read_parquet('{ml100k.marts_dir}/ctr_samples.parquet') as s
        asof join read_parquet('{ml100k.marts_dir}/user_history.parquet') as h
          on s.user_id = h.user_id and s.event_timestamp >= h.event_timestamp
        where h.history_item_ids != s.history_item_ids
        """
    ).fetchall()[0][0]
    assert mismatches == 0


def test_prompt_inputs(ml100k):
    users = mart(ml100k, "user_prompt_inputs")
    assert len(users) == 943
    first = next(u for u in users if u["user_id"] == "1")
    assert first["history_length"] == 10 and len(first["history"]) == 10
    assert {"title", "category", "rating"} <= set(first["history"][0])
    assert first["occupation"] == "technician"
    items = {i["item_id"]: i for i in mart(ml100k, "item_prompt_inputs")}
    assert len(items) == 1682
    toy_story = items["1"]
    assert toy_story["title"] == "Toy Story" and toy_story["category"] == "Animation"
    assert toy_story["liker_rating"] > 3 >= toy_story["disliker_rating"]
    assert 0 < len(toy_story["liker_history"]) <= 10


def test_items_never_learn_from_valid_or_test_ratings(ml100k):
    """The liker and disliker of every item are rated in the LLM history or train positions."""
    con = duckdb.connect()
    leaks = con.sql(
        f"""
        select count(*)
        from read_parquet('{ml100k.marts_dir}/item_prompt_inputs.parquet') as p
        join read_parquet('{ml100k.marts_dir}/ctr_samples.parquet') as s
          on (s.user_id = p.liker_user_id or s.user_id = p.disliker_user_id) and s.item_id = p.item_id
        where s.split in ('valid', 'test')
        """
    ).fetchall()[0][0]
    assert leaks == 0


def test_amazon_books_build(amazon):
    samples = mart(amazon, "ctr_samples")
    assert samples, "the small Amazon sample must yield CTR samples"
    raw = pq.read_table(amazon.raw_dir / "ratings.parquet").to_pylist()
    ratings = [(r["user_id"], r["item_id"], r["rating"], r["timestamp"]) for r in raw]
    assert samples_of(amazon) == expected_samples(ratings, threshold=4.0, history_length=3, llm_history=2)  # 5 stars
    assert {s["split"] for s in samples} == {"train", "valid", "test"}
    assert all(count > 0 and 0 < ratio < 1 for count, ratio in split_counts(amazon.marts_dir).values())
    profile = {i["item_id"]: i for i in mart(amazon, "item_profile")}
    assert profile["B0001X"]["category"] == "History"  # the second-level category
    assert profile["B0001X"]["brand"] == "Author 1"
    assert any(i["brand"] is None for i in profile.values()) and any(i["category"] is None for i in profile.values())
    assert all(u["age"] is None for u in mart(amazon, "user_profile"))


def test_kar_protocol_splits_by_user(ml1m, ml1m_files, tmp_path):
    settings = ml1m.model_copy(update={"data_dir": tmp_path, "protocol": "kar"})
    shutil.copytree(ml1m.raw_dir, settings.raw_dir)
    build_marts(settings)
    n = defaultdict(int)
    for user, *_ in ml1m_files[1]:
        n[str(user)] += 1
    kinds, positions = defaultdict(set), defaultdict(list)
    for sample in mart(settings, "ctr_samples"):
        kinds[sample["user_id"]].add("test" if sample["split"] == "test" else "train")
        positions[sample["user_id"]].append(sample["position"])
    assert all(len(kind) == 1 for kind in kinds.values())  # a user is all train (+ valid) or all test
    assert 0 < sum(kind == {"test"} for kind in kinds.values()) < len(kinds)
    for user, count in n.items():
        history_end = min((count + 1) // 2, 30)
        assert sorted(positions[user]) == list(range(history_end, count))
    prompts = {r["user_id"]: r["history_length"] for r in mart(settings, "user_prompt_inputs")}
    assert prompts == {user: min((count + 1) // 2, 10) for user, count in n.items()}


def test_valid_fraction_is_seeded(ml1m, tmp_path):
    def valid_ids(seed, run):
        settings = ml1m.model_copy(update={"data_dir": tmp_path / run, "valid_strategy": "fraction", "seed": seed})
        shutil.copytree(ml1m.raw_dir, settings.raw_dir)
        build_marts(settings, select="+ctr_samples")
        return {s["sample_id"] for s in mart(settings, "ctr_samples") if s["split"] == "valid"}

    first, again, other = valid_ids(1, "first"), valid_ids(1, "again"), valid_ids(2, "other")
    assert first == again and first != other
    train_and_valid = sum(1 for s in mart(ml1m, "ctr_samples") if s["split"] in ("train", "valid"))
    assert 0.03 < len(first) / train_and_valid < 0.2


def test_marts_record_the_settings_they_were_built_with(ml1m, amazon):
    assert built_with(ml1m.marts_dir) == {
        key: value for key, value in ml1m.dbt_vars().items() if key not in ("raw_dir", "marts_dir", "domain")
    }
    assert (built_with(amazon.marts_dir)["history_length"], built_with(amazon.marts_dir)["valid_strategy"]) == (3, "temporal")


def test_valid_scattered_among_train_fails_the_temporal_data_test(ml1m, tmp_path):
    """The temporal check can fail: build with valid_strategy fraction, then test those tables as temporal."""
    scattered = ml1m.model_copy(update={"data_dir": tmp_path, "valid_strategy": "fraction"})
    shutil.copytree(ml1m.raw_dir, scattered.raw_dir)
    build_marts(scattered)
    temporal = scattered.model_copy(update={"valid_strategy": "temporal"})
    with pytest.raises(MartsError, match="valid_follows_the_train_positions"):
        run_dbt(temporal, "test", "--select", "valid_follows_the_train_positions")


def test_a_leaking_history_fails_the_data_test(ml1m, tmp_path):
    """The leakage test can fail: put each sample's own item into its history and run it again."""
    settings = ml1m.model_copy(update={"data_dir": tmp_path})
    shutil.copytree(ml1m.raw_dir, settings.raw_dir)
    build_marts(settings)
    path = settings.marts_dir / "ctr_samples.parquet"
    duckdb.sql(
        f"copy (select * replace (list_append(history_item_ids, item_id) as history_item_ids) "
        f"from read_parquet('{path}')) to '{path}.leak' (format parquet)"
    )
    shutil.move(f"{path}.leak", path)
    with pytest.raises(MartsError, match="history_precedes_its_sample"):
        run_dbt(settings, "test", "--select", "history_precedes_its_sample")


def test_build_without_raw_tables_is_a_clear_error(tmp_path):
    from r4ec.config import Settings

    with pytest.raises(MartsError, match="run `r4ec data load` first"):
        build_marts(Settings(data_dir=tmp_path))


def test_each_user_has_a_current_history_after_their_last_interaction(ml100k):
    con = duckdb.connect()
    rows = con.sql(
        f"""
        with latest as (
            select user_id, arg_max(history_item_ids, event_timestamp) as current, max(event_timestamp) as at
            from read_parquet('{ml100k.marts_dir}/user_history.parquet') group by user_id
        ),
        truth as (  -- the last sample's history plus the last sample's own item
            select user_id, list_append(arg_max(history_item_ids, position), arg_max(item_id, position)) as items,
                   max(event_timestamp) as last_seen
            from read_parquet('{ml100k.marts_dir}/ctr_samples.parquet') group by user_id
        )
        select latest.user_id, latest.current, truth.items[-10:], latest.at > truth.last_seen
        from latest join truth using (user_id)
        """
    ).fetchall()
    assert len(rows) == 943
    assert all(current == newest and after for _, current, newest, after in rows)
