"""The tuned actor and reflector on one llama.cpp server: how to schedule them, side by side on the same users.

    .venv/bin/python benchmarks/tuned_scheduling.py --users 50 \
        --actor-adapter data/tuning/ml-100k/adapters/actor/adapter \
        --reflector-adapter data/tuning/ml-100k/adapters/reflector/adapter

llama.cpp's server decodes together only the slots whose LoRA adapters are the same (`can_batch_with` in its
server-context.cpp), and a slot that changes adapter drops its cached prompt. With entities pipelined (one per slot,
each at its own pace: the job's default) actor and reflector requests are in flight together and each step of the
server serves one of the two groups; step by step (`knowledge.pipelines = 1`) every entity's reason goes out
together, then every reflection, then every refinement. Each arm runs the iterative job (N = 1) on the same seeded
users from an empty answer cache, two Spark parts at a time as the study does; the anchor is the base model with no
adapter, pipelined. Needs the ml-100k marts and the adapters (`r4ec tuning train`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from r4ec.config import Settings
from r4ec.knowledge.job import generate_knowledge
from r4ec.knowledge.report import read_knowledge
from r4ec.layout import knowledge_dir


def run_arm(base: Settings, scratch: Path, name: str, users: int, **knowledge: object) -> tuple[float, list[dict]]:
    """(wall seconds, knowledge rows) of the iterative job on `users` users in a data dir of its own."""
    data = scratch / name
    (data / "marts").mkdir(parents=True)
    (data / "marts" / base.dataset).symlink_to(base.marts_dir)
    (data / "models").symlink_to(base.models_dir)  # the GGUF files and converted adapters, made once
    settings = Settings(data_dir=data, knowledge={"strategy": "iterative", "limit": users, **knowledge})
    started = time.perf_counter()
    generate_knowledge(settings, "user")
    return time.perf_counter() - started, read_knowledge(knowledge_dir(settings, "user"))


def line(name: str, wall: float, rows: list[dict]) -> str:
    generated = sum(r["generated_tokens"] for r in rows)
    computed = sum(r["prompt_tokens_computed"] for r in rows)
    prompt = sum(r["tokens_in"] for r in rows)
    calls = sum(r["llm_calls"] for r in rows)
    cut = sum(r["replies_cut"] for r in rows)
    return (f"{name}: {len(rows)} users in {wall:.0f}s ({wall / len(rows):.2f}s each, Spark and server start "
            f"included); {calls} LLM calls, {prompt:,} prompt tokens ({computed:,} computed), {generated:,} generated "
            f"= {generated / wall:.1f} generated tokens/s; {cut} replies cut")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50, help="a seeded sample of this many users (default 50)")
    parser.add_argument("--actor-adapter", type=Path, required=True)
    parser.add_argument("--reflector-adapter", type=Path, required=True)
    args = parser.parse_args()
    base = Settings()
    adapters = {"actor_adapter": args.actor_adapter.resolve(), "reflector_adapter": args.reflector_adapter.resolve()}
    with tempfile.TemporaryDirectory() as scratch:
        arms = {
            "base model, pipelined (anchor)": {},
            "tuned pair, pipelined (one entity per slot)": {**adapters},
            "tuned pair, step by step (pipelines = 1)": {**adapters, "pipelines": 1},
        }
        results = {}
        for name, knowledge in arms.items():
            results[name] = run_arm(base, Path(scratch), f"arm{len(results)}", args.users, **knowledge)
            print(line(name, *results[name]), flush=True)
        (_, piped), (_, stepped) = list(results.values())[1:]
        stepped_by_user = {r["user_id"]: r["knowledge"] for r in stepped}
        same = sum(r["knowledge"] == stepped_by_user.get(r["user_id"]) for r in piped)
        print(f"tuned pair: {same} of {len(piped)} users got the same knowledge either way (greedy)")


if __name__ == "__main__":
    main()
