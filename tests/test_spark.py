import json
import logging
import re
import time
from pathlib import Path

import pytest

from r4ec.spark import progress_line, run_parts, spark_session


def record(part: int, step: str, share: float, generated: int, prompt: int) -> dict:
    return {"part": part, "entities": 25, "step": step, "share": share, "llm_calls": 3, "prompt_tokens": prompt,
            "generated_tokens": generated, "seconds": 60.0}  # fmt: skip


def test_progress_line_counts_parts_steps_tokens_and_the_eta():
    running = [record(3, "reason 3/25", 1 / 25, 345, 8_000), record(2, "reason 25/25, reflect-1 17/25", 14 / 25, 2_000, 30_000)]
    finished = [{"generated_tokens": 10_000, "prompt_tokens": 50_000}]
    # 25 entities were done before; 20 since, and 1 + 14 entities' worth of work in the running parts: 60 to go at 35 per 245 s
    assert progress_line("user_knowledge", 45, 120, running, finished, 245.0, initial=25) == (
        "user_knowledge: 45/120 entities done; running parts 2,3: reason 25/25, reflect-1 17/25; reason 3/25; "
        "12,345 generated tokens at 50.4 tokens/s (prompt 88,000 tokens); ETA 7m00s"
    )


def test_progress_line_without_a_rate_says_eta_unknown():
    running = [{"part": 0, "entities": 10, "step": "reason 0/10"}]  # no share
    line = progress_line("x", 0, 10, running, [], 30.0)
    assert line == "x: 0/10 entities done; running parts 0: reason 0/10; ETA unknown"
    assert progress_line("vectors", 100, 943, [], [], 60.0) == "vectors: 100/943 entities done; ETA 8m26s"
    assert progress_line("vectors", 1, 100, [], [], 60.0).endswith("; ETA 1h39m")


@pytest.mark.integration
def test_run_parts_logs_running_parts_while_they_run(tmp_path, caplog):
    """Part 0 lands at once; part 1 keeps running (a progress record, no output) for a few progress intervals."""
    progress = tmp_path / "_progress"
    (progress / "part-00001.json").parent.mkdir()
    (progress / "part-00001.json").write_text(json.dumps({"part": 1, "generated_tokens": 10**6}))  # a killed run's

    def task(spec: dict) -> dict:
        first = dict(part=0, entities=4, step="refine-1 4/4", share=1.0, prompt_tokens=1_000, generated_tokens=100)
        running = dict(part=1, entities=6, step="reflect-1 3/6", share=0.5, prompt_tokens=2_000, generated_tokens=50)
        record = Path(spec["progress"]) / f"part-0000{spec['part']}.json"
        record.with_suffix(".partial").write_text(json.dumps(first if spec["part"] == 0 else running))
        record.with_suffix(".partial").replace(record)
        if spec["part"] == 1:
            deadline = time.monotonic() + 60  # part 0 lands first, also where the two run one after the other
            while not Path(spec["out"]).with_name("part-00000.parquet").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3)
        Path(spec["out"]).write_text("done")
        return {"part": spec["part"]}

    outputs = {tmp_path / "part-00000.parquet": 4, tmp_path / "part-00001.parquet": 6}
    specs = [{"part": n, "out": str(path), "progress": str(progress)} for n, path in enumerate(outputs)]
    caplog.set_level(logging.INFO, logger="r4ec.spark")
    spark = spark_session("local[2]", "r4ec-test-progress")
    results = run_parts(spark, task, specs, outputs, 10, "test_knowledge", progress_dir=progress, interval=0.5)
    assert sorted(r["part"] for r in results) == [0, 1]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test_knowledge: ")]
    wanted = re.compile(
        r"test_knowledge: 4/10 entities done; running parts 1: reflect-1 3/6; 150 generated tokens at [\d.]+ tokens/s "
        r"\(prompt 3,000 tokens\); ETA \d\S*$"
    )
    assert any(wanted.match(line) for line in lines), lines
