"""Generation throughput, side by side in one run on the same real reason prompts (SmolLM2-135M-Instruct, CPU):

    .venv/bin/python benchmarks/generation_throughput.py --users 64

1. this machine's matrix-multiply throughput, float32 and bfloat16 (torch): the ceiling;
2. plain batched `model.generate` in float32 (transformers, static batches of 8): the floor before llama.cpp;
3. llama.cpp's own `llama-batched-bench` at the prompts' mean length and the replies' mean length: the anchor;
   (with `--adapter`, again with that LoRA adapter applied: what serving a tuned actor or reflector costs);
4. the engine alone: llama-server with the job's settings, all prompts sent at once over HTTP;
5. the knowledge job (strategy single, one Spark part) on that engine, with an empty answer cache.

Tokens/s counts generated tokens over wall time, prompt processing included. Useful work is the prompt tokens
computed (prefix-cache hits excluded) and the generated tokens at SmolLM2's cost per token, over the float32
matmul figure. Needs `r4ec demo` (the ml-100k marts) first. Targets (issue 10): >= 100 generated tokens/s,
useful work >= 70% of float32 matmul, the job within 10% of its engine alone.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from r4ec.config import Settings
from r4ec.knowledge import llamacpp, prompts
from r4ec.knowledge.backends import LlamaCppBackend, Request, cut_at_stop
from r4ec.knowledge.gguf_lora import adapter_gguf
from r4ec.knowledge.job import generate_knowledge, loop_config, select_entities
from r4ec.knowledge.report import read_knowledge
from r4ec.layout import knowledge_dir
from r4ec.local_models import SMOLLM2, smollm2_checkpoint

GFLOP_PER_PROMPT_TOKEN = 0.21  # SmolLM2-135M, DESIGN §7
GFLOP_PER_GENERATED_TOKEN = 0.3


def matmul_gflops(dtype: torch.dtype, size: int = 1024, seconds: float = 3.0) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9


def plain_generate(settings: Settings, chats: list[list[dict]], batch_size: int = 8) -> tuple[int, int, float, dict]:
    """Batched float32 `model.generate` with nothing around it: (prompt tokens, generated tokens, seconds, replies
    by prompt text)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_flush_denormal(True)
    path = smollm2_checkpoint(settings.models_dir, "float32")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config = loop_config(settings, "user").reason_generation()
    texts = sorted(
        (tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) + config.prefix for c in chats),
        key=lambda t: len(tokenizer(t).input_ids),
    )  # as the backend does
    prompt, generated, started, replies = 0, 0, time.perf_counter(), {}
    enders = torch.tensor([tokenizer.eos_token_id, tokenizer.pad_token_id])
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(
                **encoded, do_sample=False, max_new_tokens=config.max_new_tokens, temperature=None, top_p=None,
                top_k=None, repetition_penalty=config.repetition_penalty, pad_token_id=tokenizer.pad_token_id,
                stop_strings=list(config.stop), tokenizer=tokenizer,
            )  # fmt: skip
        prompt += int(encoded.attention_mask.sum())
        batch = texts[start : start + batch_size]
        for text, row in zip(batch, output[:, encoded.input_ids.shape[1] :]):  # counted as the backend counts
            ended = torch.isin(row, enders).nonzero()
            generated += int(ended[0]) + 1 if len(ended) else len(row)
            reply = tokenizer.decode(row[: int(ended[0]) + 1 if len(ended) else len(row)], skip_special_tokens=True)
            replies[text] = cut_at_stop(config.prefix + reply, config.stop).strip()
    return prompt, generated, time.perf_counter() - started, replies


def batched_bench(model: Path, prompt: int, generated: int, slots: int, lora: Path | None = None) -> str:
    """llama.cpp's own figure for `slots` sequences of this shape (with a LoRA adapter applied): its table row."""
    command = [str(llamacpp.binary("llama-batched-bench")), "-m", str(model), "-c", str(slots * (prompt + generated) + 512),
               "-b", "2048", "-ub", "512", "-npp", str(prompt), "-ntg", str(generated), "-npl", str(slots),
               "-t", str(os.cpu_count()), "-fa", "on", *(["--lora", str(lora)] if lora else [])]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True).stdout
    row = [line for line in out.splitlines() if re.match(r"^\|\s+\d", line)][-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    return f"prompt {cells[5]} tokens/s, decode {cells[7]} tokens/s, overall {cells[9]} tokens/s"


def engine_alone(settings: Settings, chats: list[list[dict]], scratch: Path) -> tuple[int, int, int, float, Path, list]:
    """(prompt tokens, of which computed, generated tokens, seconds, model file, replies) on a fresh llama-server."""
    k = settings.knowledge
    model = llamacpp.model_file(SMOLLM2, k.quantization, settings.models_dir)
    with llamacpp.LlamaServer(model, scratch / "server.log", k.slots, k.context_per_slot) as server:
        backend = LlamaCppBackend(server.base_url, model.name, concurrency=k.slots, base_id="bench", context=k.context_per_slot)
        config = loop_config(settings, "user").reason_generation()
        started = time.perf_counter()
        out = backend.generate([Request.chat(c) for c in chats], config)
        seconds = time.perf_counter() - started
    prompt = sum(g.tokens_in for g in out)
    texts = [g.text for g in out]
    computed = sum(g.prompt_tokens_computed for g in out)
    return prompt, computed, sum(g.tokens_out for g in out), seconds, model, texts


def agreement(plain: dict[str, str], engine: list[str], settings: Settings, chats: list[list[dict]]) -> str:
    """How far llama.cpp's greedy replies (F16 weights, its kernels) follow transformers' (float32)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_checkpoint(settings.models_dir, "float32"))
    prefix = loop_config(settings, "user").reason_generation().prefix
    by_prompt = {tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) + prefix: reply
                 for c, reply in zip(chats, engine)}  # fmt: skip
    pairs = [(reply, by_prompt[text]) for text, reply in plain.items()]
    same = sum(a == b for a, b in pairs)
    shared = [len(os.path.commonprefix([a, b])) / max(len(a), len(b), 1) for a, b in pairs]
    return f"{same}/{len(pairs)} identical; on average the first {sum(shared) / len(shared):.0%} of a reply agrees"


def work(prompt: int, generated: int) -> float:
    return prompt * GFLOP_PER_PROMPT_TOKEN + generated * GFLOP_PER_GENERATED_TOKEN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=64, help="reason prompts of this many users (default 64)")
    parser.add_argument("--plain-users", type=int, default=16, help="of those, for plain generate (slow; default 16)")
    parser.add_argument("--adapter", type=Path, help="a peft adapter folder: llama-batched-bench again with it applied "
                        "(e.g. data/tuning/ml-100k/adapters/actor/adapter)")  # fmt: skip
    args = parser.parse_args()
    base = Settings()
    rows = pq.read_table(base.marts_dir / "user_prompt_inputs.parquet").to_pylist()
    chosen = set(select_entities([r["user_id"] for r in rows], args.users, base.seed))
    users = [r for r in rows if r["user_id"] in chosen]
    chats = [prompts.reason_chat("user", base.domain, u) for u in users]
    torch.set_num_threads(os.cpu_count() or 1)
    f32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16, size=256)
    print(f"machine: {os.cpu_count()} cores; matmul float32 {f32:.0f} GFLOP/s, bfloat16 {bf16:.1f} GFLOP/s")

    def line(name: str, prompt: int, generated: int, seconds: float) -> None:
        useful = work(prompt, generated) / seconds
        print(f"{name}: {prompt:,} prompt + {generated:,} generated tokens in {seconds:.1f}s = "
              f"{generated / seconds:.1f} generated tokens/s; useful work {useful:.0f} GFLOP/s = {useful / f32:.0%} of "
              f"float32 matmul")  # fmt: skip

    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch)
        (data / "marts").mkdir()
        (data / "marts" / base.dataset).symlink_to(base.marts_dir)
        (data / "models").symlink_to(base.models_dir)
        settings = Settings(data_dir=data, knowledge={"strategy": "single", "limit": args.users,
                                                      "partition_size": args.users, "spark_master": "local[1]"})  # fmt: skip
        *plain, plain_replies = plain_generate(settings, chats[: args.plain_users])
        line("plain model.generate, float32", *plain)
        prompt, computed, generated, seconds, model, replies = engine_alone(settings, chats, data)
        line(f"llama-server alone ({model.name.split('.')[-2]}, {settings.knowledge.slots} slots)", computed, generated, seconds)
        print(f"  greedy replies alike: {agreement(plain_replies, replies, settings, chats)}")
        mean_prompt, mean_generated = round(prompt / len(chats)), round(generated / len(chats))
        print(f"llama-batched-bench at {mean_prompt} + {mean_generated} tokens x {settings.knowledge.slots}: "
              f"{batched_bench(model, mean_prompt, mean_generated, settings.knowledge.slots)}")  # fmt: skip
        if args.adapter:
            lora = adapter_gguf(args.adapter, model, base.models_dir / "adapters")
            print(f"  the same with the LoRA adapter {lora.name} applied: "
                  f"{batched_bench(model, mean_prompt, mean_generated, settings.knowledge.slots, lora)}")  # fmt: skip
        started = time.perf_counter()
        generate_knowledge(settings, "user")
        wall = time.perf_counter() - started
        produced = read_knowledge(knowledge_dir(settings, "user"))
        part = produced[0]["part_seconds"]
        job_prompt = sum(r["prompt_tokens_computed"] for r in produced)
        job_generated = sum(r["generated_tokens"] for r in produced)
        line("knowledge job (its part)", job_prompt, job_generated, part)
        print(f"  the job's part against the engine alone: {(job_generated / part) / (generated / seconds) - 1:+.1%} "
              f"generated tokens/s; end to end {wall:.1f}s with Spark start-up and the server's model load")  # fmt: skip


if __name__ == "__main__":
    main()
