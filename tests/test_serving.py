"""The ranking service on a real trained run and a real materialized SQLite online store (ml-100k, 200 users),
started as a real uvicorn server on a free loopback port."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest
import torch

from r4ec.cli import main
from r4ec.config import Settings
from r4ec.features.store import ctr_samples, feature_store
from r4ec.ranking.data import to_tensors
from r4ec.ranking.runs import load_run, publish, published
from r4ec.ranking.train import KNOWLEDGE_COLUMNS
from r4ec.serving.app import ServingState, create_app
from r4ec.serving.requests import MAX_BODY_BYTES
from tests.sample_files import marts_of_first_users, write_vectors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(ml100k, tmp_path_factory):
    """200 users' marts, 'single' knowledge for every user and for every item but the last, two trained runs (din on
    knowledge, lr on base), materialized; the din run published."""
    root = tmp_path_factory.mktemp("serving")
    settings = Settings(data_dir=root)
    frame = marts_of_first_users(ml100k, settings, 200)
    firsts = {entity: frame.groupby(f"{entity}_id").event_timestamp.min() for entity in ("user", "item")}
    unknown_item = sorted(firsts["item"].index)[-1]
    for entity, first in firsts.items():
        rows = [(key, when, (n % 7) / 7) for n, (key, when) in enumerate(first.items()) if key != unknown_item]
        write_vectors(settings, entity, "single", 0, rows)
    base = ["--data-dir", str(root), "--seeds", "1", "--epochs", "2"]
    assert main(["train", *base, "--backbone", "din", "--knowledge", "single"]) == 0
    assert main(["train", *base, "--backbone", "lr", "--knowledge", "none"]) == 0
    assert main(["features", "materialize", "--data-dir", str(root)]) == 0
    assert main(["publish", "din-single-mlp-seed1", "--data-dir", str(root)]) == 0
    return settings, unknown_item


@pytest.fixture(scope="module")
def server(served):
    """The app on uvicorn in a thread, polling every 0.2 s; yields its base URL."""
    import uvicorn

    settings, _ = served
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(settings, poll_s=0.2)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "the service did not start"
    yield f"http://127.0.0.1:{port}", app
    uv.should_exit = True
    thread.join(timeout=10)


def offline_scores(settings: Settings, run, pairs: list[tuple[str, str]]) -> np.ndarray:
    """The offline path: a point-in-time training set from Feast's offline store as of now, through `to_tensors`."""
    import pandas as pd

    store = feature_store(settings)
    now = datetime.now(UTC)
    entity_df = pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs], "event_timestamp": now})
    frame = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(run.feature_service)).to_df()
    frame = frame.set_index(["user_id", "item_id"]).loc[pairs].reset_index()  # the offline store returns rows in its order
    table = pa.Table.from_pandas(frame, preserve_index=False)
    tensors = to_tensors(table, run.vocab, run.history_length, KNOWLEDGE_COLUMNS, run.config["knowledge_dim"])
    with torch.inference_mode():
        return torch.sigmoid(run.model(tensors.batch(torch.arange(len(tensors))))).numpy().astype(np.float64)


def redis_twin(settings: Settings, root, redis_server: str) -> Settings:
    """The same marts, knowledge and runs under another data dir whose online store is Redis: applied, materialized."""
    from r4ec.features.store import apply, materialize

    for name in ("marts", "knowledge", "models"):
        (root / name).symlink_to(settings.data_dir / name, target_is_directory=True)
    twin = Settings(data_dir=root, features={"online_store": "redis", "redis_connection": redis_server})
    apply(twin)
    materialize(twin)
    return twin


@pytest.mark.parametrize("online_store", ["sqlite", "redis"])
def test_online_scores_equal_offline_scores_on_the_same_features(served, online_store, request, tmp_path):
    """The training/serving-skew test: test-split users and items, scored by the service's path and by the
    training-set path, with features as of now."""
    settings, unknown_item = served
    if online_store == "redis":
        settings = redis_twin(settings, tmp_path, request.getfixturevalue("redis_server"))
    state = ServingState(settings)
    state.load()
    test = ctr_samples(settings).query("split == 'test'")
    pairs = list(dict.fromkeys(zip(test.user_id, test.item_id)))[:300]
    assert len(pairs) == 300
    online = {}
    by_user: dict[str, list[str]] = {}
    for user, item in pairs:
        by_user.setdefault(user, []).append(item)
    for user, items in by_user.items():
        ranked = state.ranker.rank(user, items)
        assert not ranked.user_cold
        online.update({(user, r["item_id"]): r["score"] for r in ranked.items})
    offline = offline_scores(settings, state.ranker.run, pairs)
    np.testing.assert_allclose([online[p] for p in pairs], offline, rtol=0, atol=1e-5)
    assert len(set(np.round(offline, 6))) > 50  # the scores differ between pairs: the comparison can fail


def rank(url: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/rank", content=content, headers={"content-type": "application/json"}, timeout=30, **kwargs)


def test_rank_orders_candidates_and_names_what_answered(server, served):
    url, _ = server
    settings, _ = served
    items = [str(i) for i in range(1, 101)]
    reply = rank(url, {"user_id": "1", "item_ids": items})
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    scores = [item["score"] for item in answer["items"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 10
    assert sorted(item["item_id"] for item in answer["items"]) == sorted(items)
    assert (answer["run"], answer["feature_service"], answer["knowledge_run"]) == (
        "din-single-mlp-seed1", "single", "single",
    )  # fmt: skip
    state = ServingState(settings)
    state.load()
    direct = state.ranker.rank("1", items)
    assert [i["item_id"] for i in direct.items] == [i["item_id"] for i in answer["items"]]
    top = rank(url, {"user_id": 1, "item_ids": items, "top_k": 5}).json()["items"]
    assert [i["item_id"] for i in top] == [i["item_id"] for i in answer["items"][:5]]


def test_cold_users_and_items_are_scored_and_marked(server, served):
    url, _ = server
    _, unknown_item = served
    answer = rank(url, {"user_id": "no-such-user", "item_ids": ["1", "no-such-item", unknown_item]})
    assert answer.status_code == 200
    body = answer.json()
    assert body["user_cold"] and body["user_knowledge_missing"]
    by_id = {item["item_id"]: item for item in body["items"]}
    assert by_id["no-such-item"]["cold"] and not by_id["1"]["cold"]
    assert by_id[unknown_item]["knowledge_missing"] and not by_id[unknown_item]["cold"]  # in the store, no knowledge
    assert all(0 < item["score"] < 1 for item in body["items"])


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"\xff\xfe{}", 400, "not UTF-8"),
        (b"[1, 2]", 422, "JSON object"),
        ({"user_id": "1"}, 422, "item_ids is missing"),
        ({"user_id": "1", "item_ids": []}, 422, "1 to 1,000"),
        ({"user_id": "1", "item_ids": [str(i) for i in range(1001)]}, 422, "1 to 1,000"),
        ({"user_id": "1", "item_ids": ["1", "2", "1"]}, 422, "more than once"),
        ({"user_id": 1.5, "item_ids": ["1"]}, 422, "string or an integer"),
        ({"user_id": True, "item_ids": ["1"]}, 422, "string or an integer"),
        ({"user_id": "1", "item_ids": [{"id": 1}]}, 422, "item_ids[0]"),
        ({"user_id": "1", "item_ids": "1"}, 422, "must be an array"),
        ({"user_id": "1", "item_ids": ["1"], "top_k": 0}, 422, "top_k"),
        ({"user_id": "1", "item_ids": ["1"], "extra": 1}, 422, "unknown fields: extra"),
        ({"user_id": "", "item_ids": ["1"]}, 422, "printable"),
        (b'{"user_id": NaN, "item_ids": ["1"]}', 400, "NaN"),
        (b"[" * 100_000, 413, "bytes"),
        (json.dumps({"user_id": "1", "item_ids": ["x" * 199] * 400}).encode(), 413, "bytes"),
    ],
)
def test_bad_requests_get_a_4xx_with_one_line_and_the_service_stays_up(server, body, status, words):
    url, _ = server
    answer = rank(url, body)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert words in detail and "\n" not in detail
    assert httpx.get(f"{url}/health").status_code == 200


def test_ids_reach_the_store_as_values_not_as_sql(server):
    url, _ = server
    sneaky = "1' OR '1'='1"
    answer = rank(url, {"user_id": sneaky, "item_ids": [sneaky, "1"]}).json()
    assert answer["user_cold"] and {i["item_id"]: i["cold"] for i in answer["items"]} == {sneaky: True, "1": False}


def test_health_ready_and_metrics(server):
    url, _ = server
    assert httpx.get(f"{url}/health").json() == {"status": "live"}
    ready = httpx.get(f"{url}/ready").json()
    assert ready["status"] == "ready" and ready["feature_service"] == "single"
    rank(url, {"user_id": "no-such-user", "item_ids": ["1"]})
    rank(url, b"{not json")
    metrics = httpx.get(f"{url}/metrics").text
    assert 'r4ec_rank_errors_total{kind="json"}' in metrics
    assert 'r4ec_rank_cold_total{entity="user"}' in metrics
    for stage in ("features", "model", "total"):
        assert f'r4ec_rank_stage_seconds_bucket{{le="0.01",stage="{stage}"}}' in metrics


def test_a_publish_is_served_within_seconds_without_a_failed_request(server, served):
    url, _ = server
    settings, _ = served
    items = [str(i) for i in range(1, 51)]
    stop, answers = threading.Event(), []

    def client() -> None:
        with httpx.Client(timeout=30) as session:
            while not stop.is_set():
                reply = session.post(f"{url}/rank", json={"user_id": "2", "item_ids": items})
                answers.append((time.monotonic(), reply.status_code, reply.json().get("run")))

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(client)
        time.sleep(1)
        publish(settings, "lr-none-mlp-seed1")
        switched = time.monotonic()
        deadline = switched + 5
        while time.monotonic() < deadline and not any(a[2] == "lr-none-mlp-seed1" and a[0] > switched for a in answers):
            time.sleep(0.05)
        time.sleep(0.5)
        stop.set()
    publish(settings, "din-single-mlp-seed1")
    assert answers and all(status == 200 for _, status, _ in answers)
    assert any(run == "lr-none-mlp-seed1" for _, _, run in answers), "the publish was not served within 5 s"
    assert published(settings)["replaced"] == "lr-none-mlp-seed1"
    history = (settings.artifacts_dir / "publish_history.jsonl").read_text().splitlines()
    assert [json.loads(line)["run"] for line in history][-2:] == ["lr-none-mlp-seed1", "din-single-mlp-seed1"]


def test_a_materialize_is_served_within_seconds(server, served):
    """The item without knowledge gets some; after `features materialize` the service scores it with it."""
    url, _ = server
    settings, unknown_item = served
    deadline = time.monotonic() + 10
    while rank(url, {"user_id": "1", "item_ids": ["1"]}).json()["run"] != "din-single-mlp-seed1":
        assert time.monotonic() < deadline  # the previous test published din again
        time.sleep(0.1)
    before = rank(url, {"user_id": "1", "item_ids": [unknown_item]}).json()["items"][0]
    assert before["knowledge_missing"]
    write_vectors(settings, "item", "single", 1, [(unknown_item, datetime(1998, 1, 1, tzinfo=UTC), 1.0)])
    assert main(["features", "apply", "--data-dir", str(settings.data_dir)]) == 0
    assert main(["features", "materialize", "--data-dir", str(settings.data_dir)]) == 0
    done = time.monotonic()
    while time.monotonic() < done + 5:
        after = rank(url, {"user_id": "1", "item_ids": [unknown_item]}).json()["items"][0]
        if not after["knowledge_missing"]:
            break
        time.sleep(0.1)
    assert not after["knowledge_missing"] and after["score"] != before["score"]


def test_publish_chooses_the_best_validation_auc_and_refuses_a_changed_run(served, tmp_path):
    settings, _ = served
    runs = {p.name: json.loads((p / "metrics.json").read_text())["valid"]["auc"] for p in settings.artifacts_dir.iterdir()
            if (p / "metrics.json").is_file()}  # fmt: skip
    record = publish(settings)
    assert record["run"] == max(runs, key=runs.get)
    publish(settings, "din-single-mlp-seed1")
    copy = tmp_path / "din-copy"
    import shutil

    shutil.copytree(settings.artifacts_dir / "din-single-mlp-seed1", copy)
    torch.save({k: v + 1 for k, v in torch.load(copy / "model.pt").items()}, copy / "model.pt")
    with pytest.raises(Exception, match="model.pt differ"):
        load_run(copy)


def test_publish_passes_over_a_run_restored_without_its_weights(served, tmp_path):
    import shutil

    from r4ec.ranking import RankingError

    settings = Settings(data_dir=tmp_path)  # the served runs, copied as a study's archive restores them
    runs = {p.name: json.loads((p / "metrics.json").read_text())["valid"]["auc"] for p in served[0].artifacts_dir.iterdir()
            if (p / "metrics.json").is_file()}  # fmt: skip
    for name in runs:
        shutil.copytree(served[0].artifacts_dir / name, settings.artifacts_dir / name)
    best, second = sorted(runs, key=runs.get, reverse=True)[:2]
    (settings.artifacts_dir / best / "model.pt").unlink()
    assert publish(settings)["run"] == second
    with pytest.raises(RankingError, match=f"{best} has no model.pt"):
        publish(settings, best)
    for name in runs:
        (settings.artifacts_dir / name / "model.pt").unlink(missing_ok=True)
    with pytest.raises(RankingError, match="no finished training run that can serve"):
        publish(settings)


def test_rank_command_and_one_line_errors(served, capsys, tmp_path):
    settings, _ = served
    assert main(["rank", "--user", "1", "--items", "1", "2", "3", "--data-dir", str(settings.data_dir)]) == 0
    out = capsys.readouterr().out
    assert "run din-single-mlp-seed1" in out and "   1. " in out and "   3. " in out
    assert main(["rank", "--user", "1", "--items", "1", "--data-dir", str(tmp_path)]) == 2
    assert "no run is published" in capsys.readouterr().err
    assert main(["rank", "--user", "1", "--items", "1", "--top-k", "0", "--data-dir", str(settings.data_dir)]) == 2
    assert "--top-k must be a positive" in capsys.readouterr().err
    assert main(["publish", "no-such-run", "--data-dir", str(settings.data_dir)]) == 2
    assert "no finished run 'no-such-run'" in capsys.readouterr().err
    assert MAX_BODY_BYTES >= 1000 * 40  # a full list of long ids fits


def test_the_publish_gate_publishes_only_a_better_run_and_serves_a_snapshot(served):
    from r4ec import fingerprint
    from r4ec.ranking.runs import publish_if_better, validation_auc

    settings, _ = served
    aucs = {run: validation_auc(settings.artifacts_dir / run) for run in ("lr-none-mlp-seed1", "din-single-mlp-seed1")}
    weaker, stronger = sorted(aucs, key=aucs.get)
    publish(settings, weaker)
    history = settings.artifacts_dir / "publish_history.jsonl"
    publishes = len(history.read_text().splitlines())

    gate = publish_if_better(settings, stronger)
    assert gate.published and published(settings)["run"] == stronger and "beats the published" in gate.reason
    if weaker == "lr-none-mlp-seed1":  # base features did not change since training: the same samples, the same AUC
        assert gate.incumbent_auc == pytest.approx(aucs[weaker], abs=1e-9)
    gate = publish_if_better(settings, weaker)
    assert not gate.published and "does not beat" in gate.reason and published(settings)["run"] == stronger
    gate = publish_if_better(settings, stronger)
    assert not gate.published and gate.reason == "it is the published run already"
    assert len(history.read_text().splitlines()) == publishes + 1  # only the one real publish was recorded

    record = published(settings)
    snapshot, run = Path(record["path"]), settings.artifacts_dir / stronger
    assert snapshot.parent.parent == settings.artifacts_dir / "published" and snapshot.name == stronger
    assert {p.name: fingerprint.of_file(p) for p in snapshot.iterdir()} == {p.name: fingerprint.of_file(p) for p in run.iterdir()}
    publish(settings, "din-single-mlp-seed1")
