"""`r4ec serve`: the ranking service (FastAPI on uvicorn).

    POST /rank     {"user_id": ..., "item_ids": [...], "top_k": optional} -> items best first, with their scores
    GET  /health   the process is up
    GET  /ready    a published run is loaded and the online store answers
    GET  /metrics  Prometheus: requests, errors by kind, latency per stage, cold starts, reloads

A watcher thread polls the publish record and the online store's materialize record; a change builds a new Ranker
(run + online features) beside the old one and swaps it in, so a publish or a materialize is served within
`poll_s` plus the load, with no restart and no failed request. /rank runs on the event loop, one request at a time:
scoring is CPU work on the same cores, and the swap is a single reference assignment.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from r4ec import layout
from r4ec.config import Settings
from r4ec.serving import ServingError
from r4ec.serving.requests import MAX_BODY_BYTES, BadRequest, parse_rank_request

log = logging.getLogger(__name__)
STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _signature(*paths: Path) -> tuple:
    """What changes when a file is replaced or written (None for a file that is not there)."""
    return tuple(_stat(p) for p in paths)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_mtime_ns, found.st_size


class ServingState:
    """The Ranker in service and the watcher that replaces it."""

    def __init__(self, settings: Settings, poll_s: float = 1.0, on_reload=None) -> None:
        self.settings, self.poll_s, self.on_reload = settings, poll_s, on_reload or (lambda what, ok: None)
        self.ranker = None
        self.published_mark = self.store_mark = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _store_files(self) -> tuple[Path, ...]:
        files = [self.settings.feast_dir / "materialized.json"]
        if self.settings.features.online_store == "sqlite":
            files.append(self.settings.feast_dir / "online.db")
        return tuple(files)

    def load(self) -> None:
        """Build a Ranker from the published run and its service's online features, then swap it in."""
        from r4ec.ranking.runs import load_run, published
        from r4ec.serving.online import OnlineFeatures
        from r4ec.serving.scorer import Ranker

        published_mark, store_mark = _signature(layout.published_path(self.settings)), _signature(*self._store_files())
        record = published(self.settings)
        if record is None:
            raise ServingError(f"no run is published for {self.settings.dataset}: run `r4ec publish` first")
        run = load_run(Path(record["path"]))
        self.ranker = Ranker(run, OnlineFeatures(self.settings, run.feature_service))
        self.published_mark, self.store_mark = published_mark, store_mark
        log.info("serving %s (feature service %s, knowledge %s)", run.name, run.feature_service, run.knowledge_run)

    def check(self) -> None:
        """Reload when the publish record or the online store changed since the last load."""
        changed = [what for what, mark, now in (
            ("publish", self.published_mark, _signature(layout.published_path(self.settings))),
            ("materialize", self.store_mark, _signature(*self._store_files())),
        ) if mark != now]  # fmt: skip
        if not changed:
            return
        try:
            self.load()
            self.on_reload(changed[0], True)
        except Exception as error:  # the old ranker keeps serving until the files change again
            log.error("reload after %s failed, still serving the previous run: %s", changed[0], error)
            self.on_reload(changed[0], False)
            self.published_mark = _signature(layout.published_path(self.settings))
            self.store_mark = _signature(*self._store_files())

    def start(self) -> None:
        def watch() -> None:
            while not self._stop.wait(self.poll_s):
                self.check()

        self._thread = threading.Thread(target=watch, name="r4ec-serving-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (several apps may live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("r4ec_rank_requests", "Ranking requests answered 200.", registry=self.registry)
        self.errors = Counter("r4ec_rank_errors", "Ranking requests refused or failed, by kind.", ["kind"],
                              registry=self.registry)  # fmt: skip
        self.seconds = Histogram("r4ec_rank_stage_seconds", "Latency of /rank by stage.", ["stage"],
                                 buckets=STAGE_BUCKETS, registry=self.registry)  # fmt: skip
        self.cold = Counter("r4ec_rank_cold", "Users and items scored cold (missing from the online store).",
                            ["entity"], registry=self.registry)  # fmt: skip
        self.reloads = Counter("r4ec_reloads", "Reloads after a publish or a materialize.", ["cause", "outcome"],
                               registry=self.registry)  # fmt: skip

    def reloaded(self, cause: str, ok: bool) -> None:
        self.reloads.labels(cause, "ok" if ok else "failed").inc()


def create_app(settings: Settings, poll_s: float = 1.0):
    """The service's app; its lifespan loads the published run (a start-up error if none) and runs the watcher."""
    import contextlib

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics = Metrics()
    state = ServingState(settings, poll_s, metrics.reloaded)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        import gc

        state.load()
        gc.freeze()  # the loaded model and features are never garbage: full collections stop walking them
        state.start()
        yield
        state.stop()

    app = FastAPI(title="r4ec ranking", lifespan=lifespan)
    app.state.serving = state

    def refuse(status: int, kind: str, reason: str) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        return JSONResponse({"error": kind, "detail": reason}, status_code=status)

    @app.post("/rank")
    async def rank(request: Request):
        started = time.perf_counter()
        try:
            body = await _bounded_body(request)
            asked = parse_rank_request(body)
        except BadRequest as bad:
            return refuse(bad.status, bad.kind, bad.reason)
        ranker = state.ranker
        try:
            ranked = ranker.rank(asked.user_id, asked.item_ids, asked.top_k)
        except Exception as error:
            log.exception("ranking %s failed", asked.user_id)
            return refuse(500, "internal", f"{type(error).__name__}: {error}")
        for stage, seconds in ranked.seconds.items():
            metrics.seconds.labels(stage).observe(seconds)
        metrics.seconds.labels("total").observe(time.perf_counter() - started)
        metrics.cold.labels("user").inc(ranked.user_cold)
        metrics.cold.labels("item").inc(sum(item["cold"] for item in ranked.items))
        metrics.requests.inc()
        run = ranker.run
        return JSONResponse({
            "user_id": asked.user_id, "user_cold": ranked.user_cold, "user_knowledge_missing": ranked.user_knowledge_missing,
            "items": ranked.items, "run": run.name, "feature_service": run.feature_service,
            "knowledge_run": run.knowledge_run,
        })  # fmt: skip  (a Response skips FastAPI's per-field jsonable_encoder: ~1 ms for 100 items)

    @app.get("/health")
    async def health():
        return {"status": "live"}

    @app.get("/ready")
    async def ready():
        ranker = state.ranker
        if ranker is None:
            return JSONResponse({"status": "not ready", "detail": "no run loaded"}, status_code=503)
        try:
            ranker.features.user("\x00ready-probe")
        except Exception as error:
            return JSONResponse({"status": "not ready", "detail": f"online store: {error}"}, status_code=503)
        return {"status": "ready", "run": ranker.run.name, "feature_service": ranker.run.feature_service}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _bounded_body(request: Request) -> bytes:
    """The body, read no further than the limit: a client cannot make the service buffer more."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(413, "too_large", f"the body has {int(declared):,} bytes; at most {MAX_BODY_BYTES:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(413, "too_large", f"the body has more than {MAX_BODY_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, poll_s: float = 1.0) -> None:
    import uvicorn

    uvicorn.run(create_app(settings, poll_s), host=host, port=port, log_level="warning", access_log=False)
