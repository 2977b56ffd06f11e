"""The whole study on all of ml-100k (or --dataset), resumable, ending in benchmarks/RESULTS.md with its plot.

    .venv/bin/python benchmarks/run_all.py                       # the full study: hours on a 2-core machine
    .venv/bin/python benchmarks/run_all.py --limit 20 --seeds 1  # its shape in minutes, on a sample
    .venv/bin/python benchmarks/run_all.py --archive DIR         # on machines whose disks do not last: continue from DIR

Each step is an `r4ec` command that skips or resumes what is already done with the same inputs; run this again
after an interruption and it continues. Every command, with its time and exit status, is journalled in
DATA_DIR/reports/DATASET/study-journal.jsonl and listed on the page (r4ec/study.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from r4ec.config import Settings
from r4ec.layout import RUN_NAMES, is_run_name
from r4ec.ranking.train import BACKBONES
from r4ec.study import BENCHMARKS, DEFAULT_KNOWLEDGE, Study, run


def run_name(name: str) -> str:
    if not is_run_name(name):
        raise argparse.ArgumentTypeError(f"{name!r} names no knowledge run")
    return name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="as for r4ec (default: data)")
    parser.add_argument("--dataset", help="as for r4ec (default: ml-100k)")
    parser.add_argument("--knowledge", nargs="+", type=run_name, default=list(DEFAULT_KNOWLEDGE),
                        help=f"knowledge runs, each beside Base: {', '.join(RUN_NAMES)}, each also as NAME-enc-TAG "
                             f"for another encoder (default: {' '.join(DEFAULT_KNOWLEDGE)})")  # fmt: skip
    parser.add_argument("--backbones", nargs="+", choices=[*BACKBONES, "all"], default=["lr", "all"],
                        help="default: lr all (all = every backbone but lr)")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="default: 1 2 3")
    parser.add_argument("--limit", type=int, help="the LLM steps on a seeded sample of this many users and items")
    parser.add_argument("--epochs", type=int, help="at most this many training epochs (default: r4ec train's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS.md"), help="default: %(default)s")
    parser.add_argument("--benchmarks", nargs="*", choices=BENCHMARKS, default=list(BENCHMARKS),
                        help="speed benchmarks run last, once (default: all of them; none: --benchmarks)")  # fmt: skip
    parser.add_argument("--archive", type=Path, metavar="DIR",
                        help="a folder that outlives this machine: restore the study's costly outputs from it first "
                             "and save them to it after every command (r4ec/archive.py)")  # fmt: skip
    parser.add_argument("--no-tune", dest="tune", action="store_false",
                        help="do not make the tuned run's adapters (the SFT data, LoRA and their evaluation, and the "
                             "larger reflector's: about 2.5 hours); without them, the tuned run is left out")  # fmt: skip
    args = parser.parse_args()
    common = [*(["--data-dir", str(args.data_dir)] if args.data_dir else []),
              *(["--dataset", args.dataset] if args.dataset else [])]  # fmt: skip
    overrides = {k: v for k, v in {"data_dir": args.data_dir, "dataset": args.dataset}.items() if v is not None}
    study = Study(tuple(common), tuple(args.knowledge), tuple(args.backbones), tuple(args.seeds), args.limit,
                  args.epochs, args.out, tuple(args.benchmarks), args.archive, args.tune)  # fmt: skip
    return run(study, Settings(**overrides))


if __name__ == "__main__":
    sys.exit(main())
