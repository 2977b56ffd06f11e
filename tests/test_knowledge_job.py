"""The knowledge job on a real local Spark session with a tiny random transformers model, on real marts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from r4ec.config import Settings
from r4ec.knowledge import KnowledgeError
from r4ec.knowledge.job import generate_knowledge, output_schema, select_entities
from r4ec.knowledge.report import knowledge_report, summarize
from r4ec.layout import knowledge_dir as output_dir
from tests.sample_files import read, settings_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def test_one_part_per_partition_each_entity_once(ml1m, tiny_model, tmp_path):
    settings = settings_for(ml1m, tmp_path, tiny_model)
    summary = generate_knowledge(settings, "user")
    assert (summary.entities, summary.parts, summary.parts_run) == (10, 3, 3)
    assert sorted(p.name for p in output_dir(settings, "user").glob("part-*")) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet",
    ]  # fmt: skip
    rows = read(settings, "user")
    inputs = {r["user_id"]: r for r in pq.read_table(settings.marts_dir / "user_prompt_inputs.parquet").to_pylist()}
    assert sorted(r["user_id"] for r in rows) == sorted(select_entities(list(inputs), 10, settings.seed))
    assert pq.read_schema(output_dir(settings, "user") / "part-00000.parquet").equals(output_schema("user"))
    for row in rows:
        assert row["event_timestamp"] == inputs[row["user_id"]]["event_timestamp"]  # the as-of time of the history
        assert row["knowledge"] and row["answers"][0] and row["strategy"] == "iterative"
        assert row["prompt_version"] and row["model"].startswith("transformers:")
        assert row["llm_calls"] >= 2 and row["tokens_out"] > 0
    assert summary.llm_calls == sum(r["llm_calls"] for r in rows)


def test_item_knowledge_and_the_report(ml1m, tiny_model, tmp_path):
    settings = settings_for(ml1m, tmp_path, tiny_model, strategy="filter", samples=2, limit=6)
    generate_knowledge(settings, "item")
    rows = read(settings, "item")
    # a random reflector judges nothing reasonable: nothing is called kept, and the knowledge says it is a fallback
    assert len(rows) == 6 and all(len(r["answers"]) == 2 and r["kept_answers"] == [] for r in rows)
    assert {r["quality"] for r in rows} == {"fallback"}
    figures = summarize(rows)
    assert figures["entities"] == 6 and figures["kept_per_entity"] == 0
    assert figures["tokens_per_second"] > 0
    text = knowledge_report(output_dir(settings, "item"), "item", examples=1)
    assert "| entities | 6 |" in text and "answers kept per entity" in text and "### item " in text


def test_a_rerun_makes_zero_llm_calls(ml1m, tiny_model, tmp_path):
    settings = settings_for(ml1m, tmp_path, tiny_model)
    first = generate_knowledge(settings, "user")
    knowledge = {r["user_id"]: r["knowledge"] for r in read(settings, "user")}
    again = generate_knowledge(settings, "user")
    assert (again.parts_run, again.llm_calls) == (0, 0)  # every part is on disk
    for part in output_dir(settings, "user").glob("part-*"):
        part.unlink()
    rebuilt = generate_knowledge(settings, "user")
    assert first.llm_calls > 0 and (rebuilt.parts_run, rebuilt.llm_calls) == (3, 0)  # every answer is cached
    assert {r["user_id"]: r["knowledge"] for r in read(settings, "user")} == knowledge


def test_other_settings_need_overwrite(ml1m, tiny_model, tmp_path):
    generate_knowledge(settings_for(ml1m, tmp_path, tiny_model, limit=4), "user")
    changed = settings_for(ml1m, tmp_path, tiny_model, limit=4, max_new_tokens=6)  # (more rounds: a run of its own)
    with pytest.raises(KnowledgeError, match=r"other inputs or settings \(max_new_tokens\): pass --overwrite"):
        generate_knowledge(changed, "user")
    assert generate_knowledge(changed, "user", overwrite=True).parts_run == 1


def test_a_killed_run_resumes_without_redoing_finished_parts(ml1m, tiny_model, tmp_path):
    settings = settings_for(ml1m, tmp_path, tiny_model, partition_size=1, limit=6, spark_master="local[1]")
    env = {**os.environ, "R4EC_DATA_DIR": str(tmp_path), "R4EC_DATASET": "ml-1m",
           "R4EC_KNOWLEDGE": settings.knowledge.model_dump_json()}  # fmt: skip
    command = [sys.executable, str(REPO / "spark_jobs" / "generate_knowledge.py"), "--entity", "user"]
    job = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    out = output_dir(settings, "user")
    deadline = time.monotonic() + 240
    while len(list(out.glob("part-*.parquet"))) < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 2 <= len(finished) < 6, "the job should have been killed part-way"
    resumed = generate_knowledge(settings, "user")
    assert resumed.parts_run == 6 - len(finished)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name in finished} == finished
    ids = [r["user_id"] for r in read(settings, "user")]
    assert len(ids) == len(set(ids)) == 6
    assert not list(out.glob("*.partial"))


def test_missing_inputs_are_a_clear_error(tmp_path):
    with pytest.raises(KnowledgeError, match="run `r4ec marts build` first"):
        generate_knowledge(Settings(data_dir=tmp_path), "user")


def test_marts_rebuilt_with_another_protocol_are_not_read_as_the_old_run(ml1m, tiny_model, tmp_path):
    """Defect: the manifest ignored the protocol and the prompt-input mart itself, so after `marts build --protocol
    kar` the old parts (old histories, old as-of times) were reused as they were."""
    from r4ec.marts import build_marts

    settings = settings_for(ml1m, tmp_path, tiny_model, limit=4)
    shutil.copytree(ml1m.raw_dir, tmp_path / "raw" / "ml-1m")
    generate_knowledge(settings, "user")
    before = {r["user_id"]: r["event_timestamp"] for r in read(settings, "user")}
    kar = settings.model_copy(update={"protocol": "kar"})
    build_marts(kar)
    with pytest.raises(KnowledgeError, match=r"other inputs or settings \(inputs, protocol\)"):
        generate_knowledge(kar, "user")
    redone = generate_knowledge(kar, "user", overwrite=True)
    assert redone.parts_run == 1
    after = {r["user_id"]: r["event_timestamp"] for r in read(kar, "user")}
    inputs = {r["user_id"]: r["event_timestamp"] for r in pq.read_table(kar.marts_dir / "user_prompt_inputs.parquet").to_pylist()}
    assert after == {u: inputs[u] for u in after}  # the new as-of times
    assert after != before


def test_a_part_from_other_inputs_is_redone_not_skipped(ml1m, tiny_model, tmp_path):
    """Defect: a part was skipped when its file merely existed, so part numbers could map to other ids."""
    settings = settings_for(ml1m, tmp_path, tiny_model)
    generate_knowledge(settings, "user")
    out = output_dir(settings, "user")
    shutil.copy(out / "part-00000.parquet", out / "part-00001.parquet")  # right name, other ids
    again = generate_knowledge(settings, "user")
    assert (again.parts_run, again.llm_calls) == (1, 0)
    ids = [r["user_id"] for r in read(settings, "user")]
    assert len(ids) == len(set(ids)) == 10
