"""Every LLM answer, kept by the hash of (model, adapter, prompt, generation settings).

Re-running an unchanged step calls the LLM zero times. The store is one SQLite file (WAL), safe for the several
Spark worker processes of one machine; on a cluster, point each executor at its own file or a shared volume.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from r4ec.knowledge.backends import Backend, Generation, GenerationConfig, OnResult, Request

ADDED = {"choices": ()}  # GenerationConfig's settings added since answers were first cached, with their default


def answer_key(model_id: str, request: Request, config: GenerationConfig) -> str:
    """`model_id` is the backend's `answered_by(request.adapter)`. A setting added after answers were cached enters
    the key only when it is used (`choices`), so those answers, generated exactly as before, are still found."""
    settings = {name: value for name, value in asdict(config).items() if name not in ADDED or value != ADDED[name]}
    payload = {"model": model_id, "adapter": request.adapter, "messages": request.messages,
               "sample": request.sample, "config": settings}  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class KeyValueStore:
    """One SQLite table (WAL, safe for several worker processes) of key -> value columns; lookups in chunks."""

    def __init__(self, path: Path, table: str, columns: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.table = path, table
        self.width = len(columns.split(","))
        self._lock = threading.Lock()  # the loop's pipelines share one connection
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False)
        self._use_wal()
        self._db.execute(f"create table if not exists {table} (key text primary key, {columns})")
        self._db.commit()

    def _use_wal(self, attempts: int = 50) -> None:
        """Switching to WAL takes an exclusive lock and does not wait on the busy timeout: two Spark workers opening
        a new file at once would see "database is locked". WAL is a property of the file, so once set it stays."""
        for attempt in range(attempts):
            try:
                self._db.execute("pragma journal_mode=wal")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == attempts - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def get_many(self, keys: Sequence[str]) -> dict[str, tuple]:
        found: dict[str, tuple] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            query = f"select * from {self.table} where key in ({','.join('?' * len(chunk))})"
            with self._lock:
                rows = self._db.execute(query, chunk).fetchall()
            found.update((key, tuple(values)) for key, *values in rows)
        return found

    def put_many(self, items: dict[str, tuple], replace: bool = True) -> None:
        """Store the items; with replace False, a key already held keeps its value."""
        marks, verb = ", ".join("?" * (self.width + 1)), "insert or replace" if replace else "insert or ignore"
        with self._lock:
            self._db.executemany(
                f"{verb} into {self.table} values ({marks})",
                [(key, *values) for key, values in items.items()],
            )
            self._db.commit()

    def items(self) -> list[tuple]:
        """Every row, (key, *values), in key order."""
        with self._lock:
            return self._db.execute(f"select * from {self.table} order by key").fetchall()

    def __len__(self) -> int:
        return self._db.execute(f"select count(*) from {self.table}").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class AnswerCache:
    def __init__(self, path: Path) -> None:
        self.store = KeyValueStore(path, "answers", "text text, tokens_in int, tokens_out int")

    def get_many(self, keys: Sequence[str]) -> dict[str, Generation]:
        return {key: Generation(*values, cached=True) for key, values in self.store.get_many(keys).items()}

    def put_many(self, items: dict[str, Generation]) -> None:
        self.store.put_many({key: (g.text, g.tokens_in, g.tokens_out) for key, g in items.items()})

    def __len__(self) -> int:
        return len(self.store)


class CachedBackend:
    """A backend that asks its inner backend only for answers the cache does not hold; `calls` counts those."""

    def __init__(self, backend: Backend, cache: AnswerCache) -> None:
        self.backend = backend
        self.cache = cache
        self.calls = 0

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def answered_by(self, adapter: str | None) -> str:
        return self.backend.answered_by(adapter)

    def generate(
        self, requests: Sequence[Request], config: GenerationConfig, on_result: OnResult | None = None
    ) -> list[Generation]:
        keys = [answer_key(self.backend.answered_by(r.adapter), r, config) for r in requests]
        found = self.cache.get_many(keys)
        for key in keys if on_result else ():
            if key in found:
                on_result(found[key])
        missing = list(dict.fromkeys(k for k in keys if k not in found))  # a prompt asked twice is generated once
        if missing:
            first = {k: r for k, r in zip(keys, requests)}
            fresh = self.backend.generate([first[k] for k in missing], config, on_result)
            self.calls += len(missing)
            self.cache.put_many(dict(zip(missing, fresh)))
            found.update(zip(missing, fresh))
        return [found[k] for k in keys]
