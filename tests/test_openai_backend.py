"""The openai backend over real HTTP: against r4ec's own OpenAI-compatible server running a real (tiny) model,
and against a throw-away server that fails on purpose, for retries and timeouts."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from r4ec.knowledge.backends import BackendError, GenerationConfig, OpenAIBackend, Request, TransformersBackend
from r4ec.knowledge.cache import AnswerCache, CachedBackend
from r4ec.knowledge.loop import LoopConfig, run_loop
from r4ec.knowledge.serve import create_app
from tests.sample_files import ask_chat

GEN = GenerationConfig(max_new_tokens=12)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_model(tiny_model):
    return TransformersBackend(str(tiny_model), dtype="float32", batch_size=4)


@pytest.fixture(scope="module")
def server(local_model):
    import uvicorn

    port = free_port()
    config = uvicorn.Config(create_app(local_model, "tiny"), host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    running.should_exit = True
    thread.join(timeout=10)


def chat(text: str) -> Request:
    return Request.chat(ask_chat(text))


def test_answers_over_http_match_the_local_model(server, local_model):
    remote = OpenAIBackend(server, "tiny", concurrency=2)
    requests = [chat("Describe a viewer who loves comedies."), chat("Describe Heat (1995).")]
    config = GenerationConfig(max_new_tokens=12, prefix="<preference>", stop=("</preference>",))
    over_http = remote.generate(requests, config)
    local = local_model.generate(requests, config)
    assert [g.text for g in over_http] == [g.text for g in local]  # prefix restored, same greedy continuation
    assert all(g.text.startswith("<preference>") for g in over_http)
    assert [(g.tokens_in, g.tokens_out) for g in over_http] == [(g.tokens_in, g.tokens_out) for g in local]


def test_the_loop_runs_over_http_and_caches(server, tmp_path):
    backend = CachedBackend(OpenAIBackend(server, "tiny"), AnswerCache(tmp_path / "a.sqlite"))
    user = {"user_id": "1", "age": 30, "gender": "F", "occupation": "writer",
            "history": [{"item_id": "1", "title": "Heat", "release_year": 1995, "category": "Action", "rating": 4.0}]}  # fmt: skip
    chains = run_loop(backend, [user], LoopConfig("user", "movies", generation=GEN))
    assert chains[0].answers and backend.calls >= 2
    calls = backend.calls
    run_loop(backend, [user], LoopConfig("user", "movies", generation=GEN))
    assert backend.calls == calls


def test_an_unknown_model_is_a_clear_error_without_retries(server):
    with pytest.raises(BackendError, match="HTTP 404"):
        OpenAIBackend(server, "no-such-model", backoff_s=0.01).generate([chat("hi")], GEN)


class Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` requests, then a valid completion; or sleeps, to force a timeout."""

    failures = 2
    sleep_s = 0.0
    seen = 0
    body = json.dumps({"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()  # fmt: skip

    def do_POST(self):  # noqa: N802 (http.server's naming)
        type(self).seen += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.sleep_s)
        if type(self).seen <= self.failures:
            self.send_response(503)
            self.end_headers()
            return
        body = self.body
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

    def handle(self):
        with contextlib.suppress(BrokenPipeError):  # the client gave up (the timeout test)
            super().handle()


@pytest.fixture
def flaky():
    Flaky.seen, Flaky.failures, Flaky.sleep_s = 0, 2, 0.0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/v1"
    httpd.shutdown()


def test_server_errors_are_retried_with_backoff(flaky):
    backend = OpenAIBackend(flaky, "m", max_retries=3, backoff_s=0.01)
    (answer,) = backend.generate([chat("hi")], GEN)
    assert (answer.text, answer.tokens_in, Flaky.seen) == ("ok", 3, 3)


def test_retries_run_out(flaky):
    Flaky.failures = 10
    with pytest.raises(BackendError, match="HTTP 503 after 3 attempts"):
        OpenAIBackend(flaky, "m", max_retries=2, backoff_s=0.01).generate([chat("hi")], GEN)


def test_a_slow_server_times_out(flaky):
    Flaky.failures, Flaky.sleep_s = 0, 1.0
    with pytest.raises(BackendError, match="ReadTimeout"):
        OpenAIBackend(flaky, "m", timeout_s=0.2, max_retries=1, backoff_s=0.01).generate([chat("hi")], GEN)


@pytest.mark.parametrize("body", [b"<html>proxy login</html>", b'{"error": "overloaded"}', b'{"choices": []}'])
def test_a_200_that_is_not_a_completion_is_a_clear_error(flaky, body, monkeypatch):
    monkeypatch.setattr(Flaky, "body", body)
    Flaky.failures = 0
    with pytest.raises(BackendError, match="HTTP 200 but the body is not a chat completion"):
        OpenAIBackend(flaky, "m", max_retries=0).generate([chat("hi")], GEN)
