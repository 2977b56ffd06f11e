"""The `r4ec` command: one sub-command per stage, plus `demo`, which runs the stages in order."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from r4ec.config import Settings

log = logging.getLogger("r4ec")


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from file and environment, overridden by whatever the command line names."""
    overrides = {
        name: getattr(args, name)
        for name in ("data_dir", "dataset", "source_path", "protocol", "seed")
        if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def cmd_data_load(args: argparse.Namespace) -> None:
    from r4ec.data import load_dataset

    print(load_dataset(_settings(args)).line())


def cmd_marts_build(args: argparse.Namespace) -> None:
    from r4ec.marts import build_marts

    print(build_marts(_settings(args), select=args.select).line())


def cmd_marts_vars(args: argparse.Namespace) -> None:
    print(json.dumps(_settings(args).dbt_vars()))


def cmd_demo(args: argparse.Namespace) -> None:
    from r4ec.data import load_dataset
    from r4ec.marts import build_marts

    settings = _settings(args)
    started = time.perf_counter()
    steps = [("data load", lambda: load_dataset(settings)), ("marts build", lambda: build_marts(settings))]
    lines = []
    for number, (name, step) in enumerate(steps, start=1):
        log.info("step %d/%d: %s", number, len(steps), name)
        lines.append(step().line())
    print(f"\nr4ec demo on {settings.dataset} finished in {time.perf_counter() - started:.0f}s")
    for line in lines:
        print(f"  - {line}")
    query = f"from '{settings.marts_dir}/ctr_samples.parquet' limit 5"
    print(f"  inspect: .venv/bin/python -c \"import duckdb; duckdb.sql(\\\"{query}\\\").show()\"")


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every sub-command; each overrides r4ec.toml and R4EC_* variables."""
    group = parser.add_argument_group("settings (override r4ec.toml and R4EC_* environment variables)")
    group.add_argument("--data-dir", type=Path, help="root of raw tables, marts and the warehouse (default: data)")
    group.add_argument("--dataset", choices=["ml-100k", "ml-1m", "amazon-books-2018"], help="default: ml-100k")
    group.add_argument("--source-path", type=Path, help="folder with the original files (ml-1m, amazon-books-2018)")
    group.add_argument("--protocol", choices=["r4ec", "kar"], help="sample split protocol (default: r4ec)")
    group.add_argument("--seed", type=int, help="seed of every random choice (default: 42)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r4ec",
        description="Reason, reflect, refine: LLM knowledge as recommender features. Each sub-command is one stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def command(parent, name: str, func, help: str) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, help=help, description=help)
        _add_settings_options(sub)
        sub.set_defaults(func=func)
        return sub

    data = stages.add_parser("data", help="dataset sources: write raw parquet tables").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    command(
        data,
        "load",
        cmd_data_load,
        "Read the dataset (ml-100k is fetched; ml-1m and amazon-books-2018 come from --source-path) and write "
        "ratings, items, users and rejects as parquet under DATA_DIR/raw/DATASET.",
    )

    marts = stages.add_parser("marts", help="dbt marts: CTR samples, prompt inputs, feature tables").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    build = command(
        marts,
        "build",
        cmd_marts_build,
        "dbt build (models and data tests) on the raw tables; marts are exported to DATA_DIR/marts/DATASET/*.parquet.",
    )
    build.add_argument("--select", help="dbt node selection, e.g. 'ctr_samples+'")
    command(marts, "vars", cmd_marts_vars, "Print the dbt vars as JSON, for a hand-run `dbt build --vars ...`.")

    command(stages, "demo", cmd_demo, "Run every stage in order on the configured dataset and print what came out.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from r4ec.data import DataError
    from r4ec.marts import MartsError

    try:
        args.func(args)
    except (DataError, MartsError) as error:
        print(f"r4ec: error: {error}", file=sys.stderr)
        return 2
    except ValidationError as error:
        problems = "; ".join(": ".join([".".join(map(str, e["loc"])), e["msg"]]).lstrip(": ") for e in error.errors())
        print(f"r4ec: error: bad settings: {problems}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
