import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from r4ec import cli
from r4ec.cli import build_parser, main
from r4ec.console import prints_to_log

REPO = Path(__file__).resolve().parent.parent


def test_every_command_explains_itself(capsys):
    for argv in (["--help"], ["data", "load", "--help"], ["marts", "build", "--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 0
    assert "DATA_DIR/marts/DATASET" in capsys.readouterr().out


def test_load_with_malformed_lines_ends_with_a_summary(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ratings.dat").write_text("1::2::5::978300760\n1::2\n")
    (tmp_path / "src" / "movies.dat").write_text("2::A (1990)::Drama\n")
    (tmp_path / "src" / "users.dat").write_text("1::F::1::10::48067\n")
    argv = ["data", "load", "--dataset", "ml-1m", "--source-path", str(tmp_path / "src"), "--data-dir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("ml-1m: 1 ratings, 1 items, 1 users written to")
    assert "1 lines rejected (1 expected 4 fields, found 2; see rejects.parquet)" in out[-1]


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["data", "load", "--dataset", "ml-1m", "--data-dir", str(tmp_path)]) == 2
    assert main(["marts", "build", "--data-dir", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        "r4ec: error: ml-1m needs its files: pass --source-path (or set R4EC_SOURCE_PATH)",
        f"r4ec: error: {tmp_path}/raw/ml-100k/ratings.parquet not found: run `r4ec data load` first",
    ]
    # py4j's INFO lines (one from __del__ at exit, into a stream that may be closed by then) are not let through
    assert not logging.getLogger("py4j").isEnabledFor(logging.INFO)


@pytest.mark.integration
def test_demo_runs_the_stages_and_says_where_things_are(tmp_path, downloads, tiny_model, monkeypatch, capsys):
    (tmp_path / "downloads").symlink_to(downloads, target_is_directory=True)
    for name, value in {"BACKEND": "transformers", "MODEL": str(tiny_model), "DTYPE": "float32", "MAX_NEW_TOKENS": "8"}.items():
        monkeypatch.setenv(f"R4EC_KNOWLEDGE__{name}", value)
    assert main(["demo", "--data-dir", str(tmp_path), "--sample", "3"]) == 0
    out = capsys.readouterr().out
    assert "ctr_samples: 89,627 rows" in out
    assert str(tmp_path / "marts" / "ml-100k") in out
    assert pq.read_metadata(tmp_path / "marts" / "ml-100k" / "ctr_samples.parquet").num_rows == 89_627
    for entity in ("user", "item"):
        folder = tmp_path / "knowledge" / "ml-100k" / "iterative-sample3" / f"{entity}_knowledge"
        assert f"{entity}_knowledge: 3 entities in 1 parts at {folder}" in out
        assert pq.read_table(folder).num_rows == 3
        assert pq.read_table(folder.with_name(f"{entity}_knowledge_vectors")).num_rows == 3
    training = tmp_path / "training" / "ml-100k" / "iterative_sample3.parquet"
    assert f"feast: services base, iterative_sample3; training set of 89,627 samples at {training}" in out
    assert pq.read_metadata(training).num_rows == 89_627
    table = tmp_path / "reports" / "ml-100k" / "table2.md"
    assert "ranking: test AUC lr none: 0.7" in out and f"Table 2 of all 3 finished runs at {table}" in out
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[:3] for row in rows[1:]] == [
        ["| LR", "Base", "1"], ["| DIN", "Base", "1"], ["| ", "iterative (R4ec), sample 3 [k1]", "1"]
    ]
    assert "- [k1] iterative-sample3 · tiny-llama" in table.read_text()
    tail = (table.parent / "long_tail.md").read_text()  # from the runs' saved predictions
    assert "| DIN | Base | 1 |" in tail and "long-tail users: the " in tail and "3 of 3 finished runs" in tail
    # the full run's command after the demo: the sample is never taken for it
    full = ["train", "--data-dir", str(tmp_path), "--knowledge", "iterative", "--seeds", "1", "--epochs", "1"]
    assert main(full) == 2
    assert "feature service 'iterative' is not registered (registered: base, iterative_sample3)" in capsys.readouterr().err


@pytest.mark.parametrize("job, says", [("generate_knowledge.py", "Generate user or item knowledge"),
                                       ("encode_knowledge.py", "Encode the knowledge of a run")])  # fmt: skip
def test_spark_entry_points_are_the_cli_stages(job, says):
    import sys

    script = REPO / "spark_jobs" / job
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and says in " ".join(done.stdout.split())


def _bash(command: str, data_dir, **env: str):
    """`command` as a user types it in the repository root, with .venv/bin first on PATH."""
    path = f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"
    full_env = {**os.environ, "PATH": path, "R4EC_DATA_DIR": str(data_dir), **env}
    return subprocess.run(["bash", "-c", command], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_spark_submit_chooses_the_master_over_the_setting(ml1m, tiny_model, tmp_path):
    """spark-submit sets spark.master before our code runs; a .master() in the session builder used to override it."""
    shutil.copytree(ml1m.marts_dir, tmp_path / "marts" / "ml-1m")
    knowledge = {"BACKEND": "transformers", "MODEL": str(tiny_model), "DTYPE": "float32", "MAX_NEW_TOKENS": "8",
                 "SPARK_MASTER": "local[2]"}  # fmt: skip
    done = _bash(
        "spark-submit --master local[1] spark_jobs/generate_knowledge.py --dataset ml-1m --entity user --limit 2",
        tmp_path, **{f"R4EC_KNOWLEDGE__{k}": v for k, v in knowledge.items()},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert "spark master: local[1] (chosen by spark-submit)" in done.stdout  # spark-submit merges Python's stderr
    part = tmp_path / "knowledge" / "ml-1m" / "iterative-sample2" / "user_knowledge" / "part-00000.parquet"
    assert pq.read_metadata(part).num_rows == 2


@pytest.mark.integration
def test_the_feast_cli_uses_the_online_store_r4ec_uses(ml1m, tmp_path, redis_server):
    """feature_store.yaml used to name SQLite whatever R4EC_FEATURES__ONLINE_STORE said."""
    import redis

    feast = 'eval "$(.venv/bin/r4ec features env --dataset ml-1m)" && cd feature_repo && feast apply'
    client = redis.Redis.from_url(f"redis://{redis_server}")
    for store in ("redis", "sqlite"):
        shutil.copytree(ml1m.marts_dir, tmp_path / store / "marts" / "ml-1m")
    keys = client.dbsize()
    done = _bash(
        f"{feast} && feast materialize 1990-01-01T00:00:00 2030-01-01T00:00:00", tmp_path / "redis",
        R4EC_FEATURES__ONLINE_STORE="redis", R4EC_FEATURES__REDIS_CONNECTION=redis_server,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "into the redis online store" in re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)  # feast's colours
    assert client.dbsize() > keys  # the rows really are in Redis
    assert not (tmp_path / "redis" / "feast" / "ml-1m" / "online.db").exists()

    keys = client.dbsize()
    done = _bash(feast, tmp_path / "sqlite")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Created sqlite table r4ec_ml_1m_user_profile" in done.stdout
    assert (tmp_path / "sqlite" / "feast" / "ml-1m" / "online.db").is_file() and client.dbsize() == keys


def test_quiet_main_keeps_library_output_in_its_log_and_restores_fd_2(tmp_path, monkeypatch, capfd):
    """In-process (tests, spark_jobs/) main must give file descriptor 2 back: pytest's output lives there."""

    def noisy_load(args) -> None:
        os.write(2, b"C-EXTENSION NOISE\n")  # what the JVM and duckdb's bindings do
        logging.getLogger("feast.infra.registry").info("FEAST NOISE")
        with prints_to_log("dbt"):
            print("DBT NOISE")
        logging.getLogger("r4ec.data").info("r4ec's own line")
        print("the summary")

    monkeypatch.setattr(cli, "cmd_data_load", noisy_load)
    before = os.fstat(2)
    log = tmp_path / "chosen.log"
    assert main(["--log-file", str(log), "data", "load", "--data-dir", str(tmp_path)], quiet=True) == 0
    assert (os.fstat(2).st_dev, os.fstat(2).st_ino) == (before.st_dev, before.st_ino)
    os.write(2, b"after main\n")
    out, err = capfd.readouterr()
    assert out == "the summary\n"
    assert "INFO r4ec.data: r4ec's own line" in err and err.endswith(f"log: {log}\nafter main\n")
    assert "NOISE" not in err
    logged = log.read_text()
    assert all(text in logged for text in ("C-EXTENSION NOISE", "FEAST NOISE", "INFO dbt: DBT NOISE", "own line"))

    assert main(["data", "load", "--data-dir", str(tmp_path)], quiet=True) == 0  # the default place
    assert "C-EXTENSION NOISE" in next((tmp_path / "logs").glob("data-load-*.log")).read_text()
    assert main(["--no-quiet", "data", "load", "--data-dir", str(tmp_path / "loud")], quiet=True) == 0
    assert "C-EXTENSION NOISE" in capfd.readouterr().err and not (tmp_path / "loud" / "logs").exists()


@pytest.mark.integration
def test_the_r4ec_command_shows_its_own_lines_and_logs_the_rest(ml1m, tmp_path):
    """Feast's INFO lines and prints, a DeprecationWarning and, at interpreter exit, duckdb's nanobind leak report
    (file descriptor 2) go to the log; the terminal keeps r4ec's log lines, the summary and where the log is."""
    shutil.copytree(ml1m.marts_dir, tmp_path / "marts" / "ml-1m")
    assert _bash(".venv/bin/r4ec features apply --dataset ml-1m", tmp_path).returncode == 0
    done = _bash(".venv/bin/r4ec features materialize --dataset ml-1m", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("feast: materialized into the sqlite online store: user_profile (1 new files)")
    assert done.stdout.count("\n") == 1
    assert "INFO r4ec.features.store: materializing user_profile: 1 new files" in done.stderr
    log = Path(re.search(r"^log: (.+)$", done.stderr, re.MULTILINE)[1])
    assert log.parent == tmp_path / "logs" and log.name.startswith("features-materialize-")
    for noise in ("Registry cache expired", "Materializing", "DeprecationWarning", "nanobind: leaked"):
        assert noise not in done.stderr and noise in log.read_text(), noise
