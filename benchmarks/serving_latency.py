"""Latency of the ranking service on loopback, beside plain Feast `get_online_features` (the anchor), in one run.

For each online store (SQLite, then Redis when `redis-server` is on the PATH) a real `r4ec serve` process is started
on the published run; the same seeded users and candidate lists are sent:
1. /rank, 1 user + 100 and + 1,000 candidates, sequential and from 8 concurrent clients: p50 / p99;
2. the anchor: `get_online_features` of the run's feature service for the same user and candidates, in-process;
3. a bounded load run: 8 clients for --load-seconds, 100 candidates each: requests, errors, the server's RSS.

Needs a published run and a materialized store: `r4ec train`, `r4ec publish`, `r4ec features materialize`.
Target (issue 11): p99 <= 10 ms for 100 candidates, sequential, SQLite.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq

from r4ec.config import Settings
from r4ec.layout import mart_path
from r4ec.ranking.runs import published


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def requests_of(settings: Settings, count: int, candidates: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    users = sorted({str(u) for u in pq.read_table(mart_path(settings, "user_profile"), columns=["user_id"]).column(0).to_pylist()})
    items = sorted({str(i) for i in pq.read_table(mart_path(settings, "item_profile"), columns=["item_id"]).column(0).to_pylist()})
    return [{"user_id": rng.choice(users), "item_ids": rng.sample(items, min(candidates, len(items)))} for _ in range(count)]


def percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):6.2f} ms  p99 {np.percentile(ms, 99):6.2f} ms  (n={len(ms)})"


def timed_posts(url: str, bodies: list[dict], clients: int) -> tuple[list[float], int]:
    """Each client posts its share of `bodies` one after another; (latencies, non-200 answers)."""
    latencies, failures, lock = [], [0], threading.Lock()

    def client(share: list[dict]) -> None:
        with httpx.Client(timeout=60) as session:
            for body in share:
                started = time.perf_counter()
                status = session.post(f"{url}/rank", json=body).status_code
                with lock:
                    latencies.append(time.perf_counter() - started)
                    failures[0] += status != 200

    threads = [threading.Thread(target=client, args=(bodies[n::clients],)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures[0]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_run(url: str, bodies: list[dict], seconds: float, pid: int, clients: int = 8) -> str:
    stop, counts, lock, memory = threading.Event(), {"ok": 0, "failed": 0}, threading.Lock(), [rss_mib(pid)]

    def client(n: int) -> None:
        with httpx.Client(timeout=60) as session:
            k = n
            while not stop.is_set():
                try:
                    ok = session.post(f"{url}/rank", json=bodies[k % len(bodies)]).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    counts["ok" if ok else "failed"] += 1
                k += clients

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(5)
        memory.append(rss_mib(pid))
    stop.set()
    for thread in threads:
        thread.join()
    total = counts["ok"] + counts["failed"]
    return (f"{total:,} requests in {seconds:.0f}s ({total / seconds:.0f}/s), {counts['failed']} failed; server RSS "
            f"{memory[0]:.0f} MiB at start, {memory[len(memory) // 2]:.0f} midway, {memory[-1]:.0f} at the end "
            f"(max {max(memory):.0f})")  # fmt: skip


def anchor(settings: Settings, service: str, bodies: list[dict]) -> list[float]:
    from r4ec.features.store import feature_store

    store = feature_store(settings)
    features = store.get_feature_service(service)
    latencies = []
    for body in bodies:
        rows = [{"user_id": body["user_id"], "item_id": item} for item in body["item_ids"]]
        started = time.perf_counter()
        store.get_online_features(features=features, entity_rows=rows).to_dict()
        latencies.append(time.perf_counter() - started)
    return latencies


def start_server(settings: Settings, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "r4ec.cli", "serve", "--port", str(port), "--data-dir", str(settings.data_dir)]
    server = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"r4ec serve exited with {server.returncode}")
        time.sleep(0.5)
    server.kill()
    raise SystemExit("r4ec serve was not ready after 120 s")


def redis_copy(settings: Settings, scratch: Path) -> tuple[Settings, subprocess.Popen, dict[str, str]]:
    """A data dir beside the real one (same marts, knowledge and runs; its own Feast registry) on a fresh
    redis-server, applied and materialized."""
    from r4ec.features.store import apply, materialize

    port = free_port()
    redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.5)
    for name in ("marts", "knowledge", "models", "raw"):
        (scratch / name).symlink_to(settings.data_dir.resolve() / name, target_is_directory=True)
    env = {"R4EC_FEATURES__ONLINE_STORE": "redis", "R4EC_FEATURES__REDIS_CONNECTION": f"127.0.0.1:{port}"}
    copy = Settings(data_dir=scratch, features={"online_store": "redis", "redis_connection": f"127.0.0.1:{port}"})
    apply(copy)
    materialize(copy)
    return copy, redis, env


def measure(name: str, settings: Settings, env: dict[str, str], args, service: str) -> None:
    small, large = requests_of(settings, args.requests, 100, 1), requests_of(settings, args.requests // 3, 1000, 2)
    server, url = start_server(settings, env)
    try:
        timed_posts(url, small[:20], 1)  # warm-up
        print(f"\n{name}")
        for label, bodies in (("100 candidates", small), ("1,000 candidates", large)):
            for clients in (1, 8):
                latencies, failed = timed_posts(url, bodies, clients)
                mode = "sequential" if clients == 1 else f"{clients} clients"
                print(f"  /rank {label:>16}, {mode:>10}: {percentiles(latencies)}, {failed} failed")
            print(f"  get_online_features {label:>5} rows (anchor): {percentiles(anchor(settings, service, bodies))}")
        print(f"  load run, 8 clients, 100 candidates: {load_run(url, small, args.load_seconds, server.pid)}")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600, help="requests per measurement of 100 candidates")
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"])
    args = parser.parse_args()
    settings = Settings()
    record = published(settings)
    if record is None:
        raise SystemExit("no published run: `r4ec train`, then `r4ec publish` and `r4ec features materialize`")
    print(f"run {record['run']} (feature service {record['feature_service']}); {os.cpu_count()} cores")
    if "sqlite" in args.stores:
        measure("SQLite online store", settings, {}, args, record["feature_service"])
    if "redis" not in args.stores:
        return
    if shutil.which("redis-server"):
        with tempfile.TemporaryDirectory() as scratch:
            copy, redis, env = redis_copy(settings, Path(scratch))
            try:
                measure("Redis online store", copy, env, args, record["feature_service"])
            finally:
                redis.terminate()
    else:
        print("\nRedis: redis-server is not on the PATH; skipped")


if __name__ == "__main__":
    main()
