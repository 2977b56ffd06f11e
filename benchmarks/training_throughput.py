"""Training throughput of every CTR backbone: samples/s of training steps and of evaluation on ml-100k.

    .venv/bin/python benchmarks/training_throughput.py --knowledge none single --threads 1 2

The training set comes from Feast as `r4ec train` gets it (retrieved when missing or stale) and is turned into
tensors once. Each backbone runs `--warmup` training steps, then `--steps` timed steps (forward, backward, Adam) of
`--batch-size` samples drawn from a seeded permutation of the train split, then one timed pass over the test
split without gradients. Needs the ml-100k marts and `r4ec features apply` (and encoded knowledge for `single`).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from r4ec.config import Settings
from r4ec.features.store import service_fingerprint
from r4ec.ranking.experiment import training_table
from r4ec.ranking.train import BACKBONES, KNOWLEDGE, TrainConfig, build_model, evaluate, split_tensors


def train_rate(model: nn.Module, tensors, batch_size: int, warmup: int, steps: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    order = torch.randperm(len(tensors), generator=torch.Generator().manual_seed(0))
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        start = (step * batch_size) % (len(order) - batch_size)
        batch = tensors.batch(order[start : start + batch_size])
        loss = loss_fn(model(batch), batch.label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--knowledge", nargs="+", default=["none"], choices=KNOWLEDGE)
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    settings = Settings()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} cores for torch; "
          f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup}")  # fmt: skip
    print("| backbone | knowledge | threads | parameters | train samples/s | eval samples/s |")
    print("|---|---|---:|---:|---:|---:|")
    for knowledge in args.knowledge:
        config = TrainConfig(knowledge=knowledge)
        table, _ = training_table(settings, config.service, service_fingerprint(settings, config.service))
        vocab, tensors, knowledge_dim = split_tensors(table, config)
        train, test = tensors["train"], tensors["test"]
        for threads in args.threads:
            torch.set_num_threads(threads)
            for backbone in args.backbones:
                if backbone == "lr" and knowledge != "none":
                    continue
                torch.manual_seed(0)
                model = build_model(TrainConfig(backbone=backbone, knowledge=knowledge), vocab, knowledge_dim)
                rate = train_rate(model, train, args.batch_size, args.warmup, args.steps)
                started = time.perf_counter()
                evaluate(model, test)
                eval_rate = len(test) / (time.perf_counter() - started)
                parameters = sum(p.numel() for p in model.parameters())
                print(f"| {backbone} | {knowledge} | {threads} | {parameters:,} | {rate:,.0f} | {eval_rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
