"""Every command line of README.md's `bash` blocks, run as written (bash, repository root) in README order, so a
documented command that does not do what it says fails here. A new README command runs by default: only the lines
in EXCLUDED are skipped, each with its reason.

The commands run on small real data: ml-100k marts from dbt, the one-layer Llama with SmolLM2's tokenizer
(R4EC_KNOWLEDGE__MODEL, 8 new tokens, batches of 64), and, for the training sweep, marts cut to a few users with 'single' and
'iterative' knowledge vectors written for every user and item (the sweep needs runs made on every entity).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from r4ec.config import Settings
from tests.sample_files import marts_of_first_users, write_vectors

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
RANKING_USERS = 15  # users kept for the training sweep: its 66 runs take about 40 s on 2 cores

EXCLUDED = {
    "bash scripts/setup.sh && .venv/bin/r4ec demo": "the CI runs it; the demo's stages are tested by tests/test_cli.py",
    "bash scripts/test.sh": "the CI runs it, and it runs this module",
    ".venv/bin/r4ec data load --dataset ml-1m --source-path ~/data/ml-1m": "needs the user's ml-1m files; the ml-1m "
    "loader is tested on files in that format by tests/test_data_sources.py",
    ".venv/bin/r4ec serve --port 8000": "a server that runs until stopped; tests/test_serving.py starts it on a free "
    "port and sends real requests",
    """curl -s localhost:8000/rank -d '{"user_id": "1", "item_ids": ["1", "50", "100"], "top_k": 2}'""": "needs the "
    "server above; tests/test_serving.py sends /rank requests to a running one",
    ".venv/bin/airflow standalone": "a scheduler and API server that run until stopped; tests/test_dags.py runs "
    "every DAG with dag.test() on its own Airflow metadata DB, and the issue 12 note gives a real standalone run",
    '.venv/bin/airflow pools set r4ec_feast 1 "Feast registry writes, one at a time"': "needs the standalone's "
    "metadata DB; tests/test_dags.py checks that the Feast tasks use this pool",
    ".venv/bin/airflow dags unpause r4ec_build": "needs the standalone above",
    """.venv/bin/airflow dags trigger r4ec_build -c '{"strategy": "iterative", "limit": 10, "backbones": ["lr", "din"], "epochs": 3}'""": "needs the standalone above; tests/test_dags.py runs r4ec_build with dag.test()",
    ".venv/bin/airflow dags list-runs r4ec_build": "needs the standalone above",
    ".venv/bin/r4ec tuning train --role actor --profile cpu": "needs SFT examples, which the one-layer random "
    "model's construction answers do not give; tests/test_lora.py trains the same code on examples it writes",
    ".venv/bin/r4ec tuning evaluate": "needs the adapters of the excluded command above; tests/test_tuning_evaluate.py "
    "runs it on held-out ml-100k users with the tiny model and two adapters it writes",
    ".venv/bin/r4ec marts build --dataset ml-1m": "needs the ml-1m load above; dbt on ml-1m-format data is tested by "
    "tests/test_marts.py (the ml1m fixture)",
    ".venv/bin/python benchmarks/run_all.py": "the whole study: hours of LLM generation, 24 training runs for Base and "
    "21 per knowledge run; tests/test_study.py runs the same command end to end on a sample, twice",
    ".venv/bin/python benchmarks/run_all.py --archive benchmarks/archive": "the whole study, continued from the "
    "repository's archive; tests/test_study.py runs a study with an archive, then again in a fresh data dir from it",
    ".venv/bin/python benchmarks/run_all.py --limit 20 --seeds 1 --benchmarks": "every backbone on four knowledge runs; "
    "tests/test_study.py runs the same command with --limit 2 and one backbone, twice, and on a failing step",
}


def readme_commands() -> list[tuple[str, str]]:
    """(section heading, command line) for every line of every ```bash block, continuation lines joined."""
    commands, section, block, pending = [], "", False, ""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.strip() == "```bash":
            block = True
        elif line.strip() == "```":
            block = False
        elif block and line.strip() and not line.lstrip().startswith("#"):
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            commands.append((section, pending))
            pending = ""
    return commands


def bare(command: str) -> str:
    """The command without its trailing comment (as bash reads it)."""
    return re.sub(r"\s+#\s.*$", "", command)


COMMANDS = readme_commands()
TO_RUN = [(section, command) for section, command in COMMANDS if bare(command) not in EXCLUDED]


def _data_dir_for(section: str) -> str:
    """The fixture whose data dir a README section's commands run on; a new section runs on the pipeline's."""
    if section.startswith("Ranking"):
        return "ranking_dir"
    if section.startswith("Configuration"):
        return "raw_dir"
    return "pipeline_dir"


@pytest.fixture(scope="module")
def pipeline_dir(ml100k, tmp_path_factory) -> Path:
    """ml-100k's marts, as `r4ec marts build` left them: the knowledge and feature commands run on them in turn; its
    raw tables and the downloaded source, for the replayed refresh."""
    root = tmp_path_factory.mktemp("readme-pipeline")
    shutil.copytree(ml100k.marts_dir, Settings(data_dir=root).marts_dir)
    shutil.copytree(ml100k.raw_dir, Settings(data_dir=root).raw_dir)
    (root / "downloads").symlink_to(ml100k.downloads_dir, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def raw_dir(ml100k, tmp_path_factory) -> Path:
    """Only ml-100k's raw tables: the hand-run dbt command must build the marts here, not under dbt/."""
    root = tmp_path_factory.mktemp("readme-raw")
    shutil.copytree(ml100k.raw_dir, Settings(data_dir=root).raw_dir)
    return root


@pytest.fixture(scope="module")
def ranking_dir(ml100k, tmp_path_factory) -> Path:
    """ml-100k's marts with the CTR samples of RANKING_USERS users, and full 'single' and 'iterative' knowledge runs
    (random vectors dated at each user's and item's first sample), as the README's training sweep presupposes."""
    root = tmp_path_factory.mktemp("readme-ranking")
    settings = Settings(data_dir=root)
    frame = marts_of_first_users(ml100k, settings, RANKING_USERS)
    for strategy in ("single", "iterative"):
        for entity in ("user", "item"):
            first = frame.groupby(f"{entity}_id").event_timestamp.min()
            write_vectors(
                settings, entity, strategy, 0, [(k, t, (n % 7) / 7) for n, (k, t) in enumerate(first.items())]
            )
    return root


def _contains(*expected: str) -> Callable[[str, Path], None]:
    def check(out: str, data_dir: Path) -> None:
        missing = [text for text in expected if text not in out]
        assert not missing, f"output lacks {missing}"

    return check


def _trained_every_run(out: str, data_dir: Path) -> None:
    backbones = ["din", "dien", "gru4rec", "autoint", "fignn", "dcn", "deepfm"]
    wanted = {f"lr-none-mlp-seed{s}" for s in (1, 2, 3)}
    wanted |= {f"{b}-{k}-mlp-seed{s}" for b in backbones for k in ("none", "single", "iterative") for s in (1, 2, 3)}
    assert set(re.findall(r"^(\S+): best epoch", out, re.MULTILINE)) == wanted
    assert {p.name for p in (data_dir / "models" / "artifacts" / "ml-100k").iterdir()} == wanted


def _built_the_marts_in_the_data_dir(out: str, data_dir: Path) -> None:
    assert "Completed successfully" in out
    assert (data_dir / "marts" / "ml-100k" / "ctr_samples.parquet").is_file()
    assert (data_dir / "warehouse" / "dbt-ml-100k" / "target" / "run_results.json").is_file()
    assert not (REPO / "dbt" / "data").exists()


# one promise of each command's output, checked where cheap; a check naming no README command fails the suite
def _refreshed_one_week(out: str, data_dir: Path) -> None:
    """The refresh appended parts stamped with the week's end, for the users who rated in that week."""
    import duckdb

    folder = data_dir / "knowledge" / "ml-100k" / "iterative-sample50" / "user_knowledge"
    stamps = duckdb.sql(f"select distinct event_timestamp from read_parquet('{folder}/part-asof19980308T000000-*.parquet')")
    assert [str(t) for (t,) in stamps.fetchall()] == ["1998-03-08 00:00:00+00:00"], out


CHECKS: dict[str, Callable[[str, Path], None]] = {
    ".venv/bin/r4ec knowledge generate --entity both --strategy iterative --rounds 1 --limit 50": _contains(
        "user_knowledge: 50 entities",
        "item_knowledge: 50 entities",
        "spark master: local[*] (the spark_master setting)",
    ),
    ".venv/bin/r4ec knowledge report --entity user --limit 50": _contains(
        "| entities | 50 |", "| strategy | iterative |"
    ),
    "spark-submit --master local[2] spark_jobs/encode_knowledge.py --entity both --strategy iterative --limit 50": _contains(
        "spark master: local[2] (chosen by spark-submit)",
        "user_knowledge_vectors: 50 vectors",
        "item_knowledge_vectors: 50 vectors",
    ),  # fmt: skip
    ".venv/bin/r4ec features apply": _contains("registered feature services base, iterative_sample50 in"),
    ".venv/bin/r4ec features materialize": _contains("materialized into the sqlite online store: user_profile"),
    ".venv/bin/r4ec features training-set --service iterative_sample50": _contains(
        "training set 'iterative_sample50': 89,627 rows"
    ),
    ".venv/bin/r4ec features lookup --user 1 --items 50 181 --service iterative_sample50": _contains(
        "Star Wars", "Return of the Jedi"
    ),
    'eval "$(.venv/bin/r4ec features env)" && cd feature_repo && feast feature-services list': _contains(
        "user_knowledge_iterative_sample50:user_knowledge_vector"
    ),
    ".venv/bin/r4ec train --backbone lr all --knowledge none single iterative --seeds 1 2 3": _trained_every_run,
    ".venv/bin/r4ec report": _contains("66 runs; written to"),
    ".venv/bin/r4ec tuning build-data --limit 6": _contains("SFT data: 12 samples", "users held out"),
    ".venv/bin/r4ec data load --admit-until 1998-03-08": _contains("ratings, those before 1998-03-08 00:00:00 UTC"),
    ".venv/bin/r4ec knowledge refresh --strategy iterative --limit 50 --start 1998-03-01 --end 1998-03-08": (
        _refreshed_one_week
    ),
    'eval "$(.venv/bin/r4ec marts env)" && cd dbt && dbt build --profiles-dir . --vars "$R4EC_DBT_VARS"': (
        _built_the_marts_in_the_data_dir
    ),
}


def test_the_readme_commands_are_found_and_every_exclusion_and_check_names_one():
    lines = {bare(command) for _, command in COMMANDS}
    assert len(TO_RUN) >= 10
    assert not set(EXCLUDED) - lines, "an excluded command is no longer in README.md"
    assert not set(CHECKS) - lines, "a checked command is no longer in README.md"


@pytest.mark.parametrize(
    "section, command",
    TO_RUN,
    ids=[re.sub(r"[^\w.]+", "-", bare(c).removeprefix(".venv/bin/"))[:60] for _, c in TO_RUN],
)
def test_readme_command(section, command, request, tiny_model):
    data_dir = request.getfixturevalue(_data_dir_for(section))
    env = {
        **os.environ,
        "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "R4EC_DATA_DIR": str(data_dir),
        "R4EC_KNOWLEDGE__BACKEND": "transformers",  # the tiny random model; tests/test_llamacpp.py runs the engine
        "R4EC_KNOWLEDGE__MODEL": str(tiny_model),
        "R4EC_KNOWLEDGE__MAX_NEW_TOKENS": "8",
        "R4EC_KNOWLEDGE__DTYPE": "float32",
        "R4EC_KNOWLEDGE__BATCH_SIZE": "64",  # the tiny model's calls cost their overhead: fewer, larger batches
    }
    done = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"exit {done.returncode}: {out[-3000:]}"
    if bare(command) in CHECKS:
        CHECKS[bare(command)](out, data_dir)
