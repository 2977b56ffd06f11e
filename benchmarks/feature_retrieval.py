"""Feature retrieval: (a) a point-in-time training set through Feast (r4ec's ASOF offline store, and Feast's own DuckDB
store) against a hand-written DuckDB ASOF JOIN of the same parquet (the floor); (b) online lookups of 1 user + 100 items, p50 / p99 over 1,000 calls, SQLite and Redis.

    .venv/bin/python benchmarks/feature_retrieval.py            # needs `r4ec demo` (the ml-100k marts) first

The knowledge vectors are random 384-d vectors for every user and item (dated at each one's first sample), so the
figures measure retrieval, not knowledge. Everything runs one after the other on this machine, one run each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from r4ec.config import Settings
from r4ec.data.tables import write_parquet
from r4ec.encoding import mark_complete, vectors_schema, vectors_stamp
from r4ec.features import store
from r4ec.layout import MANIFEST, KnowledgeRun, knowledge_dir, vectors_dir

SAMPLE_KEYS = "sample_id, user_id, item_id, event_timestamp, label, split"


def random_vectors(settings: Settings, entity: str, first_seen: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = [{f"{entity}_id": key, "event_timestamp": when, "vector": rng.standard_normal(384).astype(np.float32).tolist(),
             "quality": "parsed", "texts": 1, "encoder": "random"} for key, when in first_seen.items()]  # fmt: skip
    run = KnowledgeRun("iterative")
    knowledge, target = knowledge_dir(settings, entity, run), vectors_dir(settings, entity, run)
    # a knowledge part for the vectors to be stamped from: Feast reads a run's vectors only when they are its knowledge's
    part = knowledge / "part-00000.parquet"
    texts = [{f"{entity}_id": r[f"{entity}_id"], "text": "random vector"} for r in rows]
    write_parquet(pa.Table.from_pylist(texts), part)
    write_parquet(pa.Table.from_pylist(rows, schema=vectors_schema(entity, vectors_stamp(part, "random"))),
                  target / "part-00000.parquet")  # fmt: skip
    mark_complete(target, entity, "random")
    (knowledge / MANIFEST).write_text(json.dumps({"strategy": "iterative", "model": None, "inputs": "random vectors"}))


def asof_join(settings: Settings) -> tuple[int, float]:
    """The same training set by hand: each feature table ASOF-joined on (key, event_timestamp)."""
    marts = settings.marts_dir
    users, items = (vectors_dir(settings, e, KnowledgeRun("iterative")) / "*.parquet" for e in ("user", "item"))
    started = time.perf_counter()
    table = duckdb.sql(f"""
        select s.*, up.age, up.gender, up.occupation, up.zip_code,
               ip.title, ip.release_year, ip.category, ip.brand,
               h.history_item_ids, h.history_categories, h.history_brands, h.history_ratings, h.history_length,
               uk.vector as user_knowledge_vector, ik.vector as item_knowledge_vector
        from (select {SAMPLE_KEYS} from read_parquet('{marts}/ctr_samples.parquet')) s
        asof left join read_parquet('{marts}/user_profile.parquet') up
            on s.user_id = up.user_id and s.event_timestamp >= up.event_timestamp
        asof left join read_parquet('{marts}/item_profile.parquet') ip
            on s.item_id = ip.item_id and s.event_timestamp >= ip.event_timestamp
        asof left join read_parquet('{marts}/user_history.parquet') h
            on s.user_id = h.user_id and s.event_timestamp >= h.event_timestamp
        asof left join read_parquet('{users}') uk on s.user_id = uk.user_id and s.event_timestamp >= uk.event_timestamp
        asof left join read_parquet('{items}') ik on s.item_id = ik.item_id and s.event_timestamp >= ik.event_timestamp
    """).to_arrow_table()  # fmt: skip
    return table.num_rows, time.perf_counter() - started


def lookups(settings: Settings, users: list[str], items: list[str], calls: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    store.online_features(settings, users[0], items[:100], "iterative")  # warm: registry and connections
    took = []
    for _ in range(calls):
        user, chosen = users[rng.integers(len(users))], list(rng.choice(items, 100, replace=False))
        started = time.perf_counter()
        store.online_features(settings, user, chosen, "iterative")
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took), float(np.percentile(took, 99))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    base = Settings()
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(data_dir=Path(scratch))
        shutil.copytree(base.marts_dir, settings.marts_dir)
        samples = duckdb.sql(f"select {SAMPLE_KEYS} from read_parquet('{settings.marts_dir}/ctr_samples.parquet')").df()
        random_vectors(settings, "user", samples.groupby("user_id").event_timestamp.min().to_dict(), 1)
        random_vectors(settings, "item", samples.groupby("item_id").event_timestamp.min().to_dict(), 2)
        store.apply(settings)

        started = time.perf_counter()
        frame = store.training_set(settings, samples, "iterative")
        feast_s = time.perf_counter() - started
        rows, floor_s = asof_join(settings)
        stock = settings.model_copy(update={"features": settings.features.model_copy(update={"offline_store": "duckdb"})})
        started = time.perf_counter()
        store.training_set(stock, samples, "iterative")
        stock_s = time.perf_counter() - started
        print(f"(a) training set, {len(frame):,} rows with both knowledge vectors: Feast (ASOF offline store) "
              f"{feast_s:.2f}s, hand-written ASOF JOIN {floor_s:.2f}s ({rows:,} rows): {feast_s / floor_s:.1f}x the floor; "
              f"Feast's own DuckDB store {stock_s:.2f}s ({stock_s / floor_s:.1f}x)")  # fmt: skip

        users, items = sorted(samples.user_id.unique()), sorted(samples.item_id.unique())
        store.materialize(settings)
        p50, p99 = lookups(settings, users, items, args.calls)
        print(f"(b) online lookup, 1 user + 100 items, {args.calls} calls, SQLite: p50 {p50:.1f} ms, p99 {p99:.1f} ms")

        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                                 stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(0.5)
            on_redis = settings.model_copy(
                update={"features": settings.features.model_copy(
                    update={"online_store": "redis", "redis_connection": f"127.0.0.1:{port}"})}
            )  # fmt: skip
            (settings.feast_dir / "materialized.json").unlink()
            store.apply(on_redis)
            store.materialize(on_redis)
            p50, p99 = lookups(on_redis, users, items, args.calls)
            print(f"(b) online lookup, 1 user + 100 items, {args.calls} calls, Redis:  p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        finally:
            redis.terminate()


if __name__ == "__main__":
    main()
