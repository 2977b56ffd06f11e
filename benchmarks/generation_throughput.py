"""Generation throughput: the knowledge job against plain batched `model.generate` on the same prompts.

    .venv/bin/python benchmarks/generation_throughput.py --users 16

Both sides run SmolLM2-135M-Instruct (bf16, CPU) on the reason prompts of the same users, with the same generation
settings (batch size, prefilled tag, stop string, max new tokens), one after the other on this machine, with an
empty answer cache. The job's figure is its generated tokens over the wall time of its part (Spark task: reading
inputs, prompting, parsing, writing parquet); its end-to-end time (Spark start-up, model load) is printed beside.
Needs `r4ec demo` (the ml-100k marts) first. Target: the job's tokens/s within 10% of plain generate.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from r4ec.config import Settings
from r4ec.knowledge import prompts
from r4ec.knowledge.backends import SMOLLM2, smollm2_checkpoint
from r4ec.knowledge.job import generate_knowledge, loop_config, select_entities
from r4ec.knowledge.report import read_knowledge
from r4ec.layout import knowledge_dir


def plain_generate(settings: Settings, users: list[dict], batch_size: int) -> tuple[int, float]:
    """Batched `model.generate` with nothing around it: (generated tokens, seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_flush_denormal(True)
    path = smollm2_checkpoint(settings.models_dir, settings.knowledge.dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    config = loop_config(settings, "user").reason_generation()
    texts = [
        tokenizer.apply_chat_template(
            prompts.messages("reason", prompts.reason_prompt("user", settings.domain, u)),
            tokenize=False, add_generation_prompt=True,
        ) + config.prefix
        for u in users
    ]  # fmt: skip
    texts.sort(key=lambda t: len(tokenizer(t).input_ids))  # as the backend does
    generated, started = 0, time.perf_counter()
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(
                **encoded, do_sample=False, max_new_tokens=config.max_new_tokens, temperature=None, top_p=None,
                top_k=None, repetition_penalty=config.repetition_penalty, pad_token_id=tokenizer.pad_token_id,
                stop_strings=list(config.stop), tokenizer=tokenizer,
            )  # fmt: skip
        enders = torch.tensor([tokenizer.eos_token_id, tokenizer.pad_token_id])
        for row in output[:, encoded.input_ids.shape[1] :]:  # counted as the backend counts: up to the first ender
            ended = torch.isin(row, enders).nonzero()
            generated += int(ended[0]) + 1 if len(ended) else len(row)
    return generated, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    base = Settings()
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch)
        (data / "marts").mkdir()
        (data / "marts" / base.dataset).symlink_to(base.marts_dir)
        (data / "models").symlink_to(base.models_dir)
        knowledge = {"strategy": "single", "limit": args.users, "partition_size": args.users,
                     "batch_size": args.batch_size, "spark_master": "local[1]", "model": SMOLLM2}  # fmt: skip
        settings = Settings(data_dir=data, knowledge=knowledge)
        rows = pq.read_table(settings.marts_dir / "user_prompt_inputs.parquet").to_pylist()
        chosen = set(select_entities([r["user_id"] for r in rows], args.users, settings.seed))
        users = [r for r in rows if r["user_id"] in chosen]

        tokens, seconds = plain_generate(settings, users, args.batch_size)
        plain = tokens / seconds
        started = time.perf_counter()
        generate_knowledge(settings, "user")
        wall = time.perf_counter() - started
        produced = read_knowledge(knowledge_dir(settings, "user"))
        job_tokens = sum(r["generated_tokens"] for r in produced)
        job = job_tokens / produced[0]["part_seconds"]

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    print(f"plain model.generate: {tokens:,} tokens in {seconds:.1f}s = {plain:.1f} tokens/s")
    print(f"knowledge job (part): {job_tokens:,} tokens in {produced[0]['part_seconds']:.1f}s = {job:.1f} tokens/s "
          f"({job / plain - 1:+.1%} against plain); end to end {wall:.1f}s with Spark start-up and model load")  # fmt: skip


if __name__ == "__main__":
    main()
