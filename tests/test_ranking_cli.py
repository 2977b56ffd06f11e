"""`r4ec train` and `r4ec report` on real Feast training sets of ml-100k (cut to 200 users to stay quick)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r4ec.cli import main
from r4ec.config import Settings
from r4ec.data.tables import write_parquet
from r4ec.features.store import training_set_stamp
from r4ec.layout import KnowledgeRun
from r4ec.ranking import BACKBONE_NAMES
from tests.sample_files import marts_of_first_users, write_vectors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_dir(ml100k, tmp_path_factory):
    """ml-100k marts whose CTR samples are those of 200 users, with 'single' knowledge vectors for every user and
    item (random, dated at each one's first sample) and the feature services registered."""
    root = tmp_path_factory.mktemp("train-cli")
    settings = Settings(data_dir=root)
    frame = marts_of_first_users(ml100k, settings, 200)
    for entity in ("user", "item"):
        first = frame.groupby(f"{entity}_id").event_timestamp.min()
        rows = [(key, when, fill) for fill, (key, when) in enumerate(first.items())]
        write_vectors(settings, entity, "single", 0, [(k, t, (f % 7) / 7) for k, t, f in rows])
    assert main(["features", "apply", "--data-dir", str(root)]) == 0
    return root


def test_backbone_names_are_the_trainable_backbones():
    from r4ec.ranking.train import BACKBONES

    assert list(BACKBONE_NAMES) == list(BACKBONES)


def test_train_saves_runs_skips_finished_ones_and_rebuilds_stale_training_sets(data_dir, capsys):
    argv = ["train", "--data-dir", str(data_dir), "--backbone", "lr", "din", "--knowledge", "none", "single",
            "--seeds", "1", "2", "--epochs", "2"]  # fmt: skip
    assert main(argv) == 0
    artifacts = data_dir / "models" / "artifacts" / "ml-100k"
    runs = sorted(p.name for p in artifacts.iterdir())
    assert runs == [f"{b}-{k}-mlp-seed{s}" for b, k in (("din", "none"), ("din", "single"), ("lr", "none")) for s in (1, 2)]
    config = json.loads((artifacts / "din-single-mlp-seed1" / "config.json").read_text())
    training = data_dir / "training" / "ml-100k" / "single.parquet"
    assert config["feature_service"] == "single" and config["training_set"] == str(training)
    assert config["training_rows"] == pq.read_metadata(training).num_rows == pq.read_metadata(
        data_dir / "marts" / "ml-100k" / "ctr_samples.parquet").num_rows  # fmt: skip
    assert "user_knowledge_vector" in pq.read_schema(training).names
    metrics = json.loads((artifacts / "din-single-mlp-seed1" / "metrics.json").read_text())
    assert 1 <= metrics["best_epoch"] <= 2 and len(metrics["epochs"]) == 2 and 0.5 < metrics["test"]["auc"] < 1
    out = capsys.readouterr().out
    assert "din-none-mlp-seed2: best epoch" in out and str(artifacts / "din-none-mlp-seed2") in out

    weights = {run: (artifacts / run / "model.pt").stat().st_mtime_ns for run in runs}
    base_set = training.with_name("base.parquet")
    built = base_set.stat().st_mtime_ns
    assert main(argv) == 0  # everything finished: nothing retrained, training sets reused
    assert {run: (artifacts / run / "model.pt").stat().st_mtime_ns for run in runs} == weights
    assert base_set.stat().st_mtime_ns == built
    assert main([*argv, "--learning-rate", "0.01", "--backbone", "din", "--knowledge", "none"]) == 0  # other settings
    assert (artifacts / "din-none-mlp-seed1" / "model.pt").stat().st_mtime_ns > weights["din-none-mlp-seed1"]
    assert json.loads((artifacts / "din-none-mlp-seed1" / "config.json").read_text())["learning_rate"] == 0.01

    samples = data_dir / "marts" / "ml-100k" / "ctr_samples.parquet"
    os.utime(samples, ns=(built + 10**9, built + 10**9))  # touched, not changed: modification times decide nothing
    lr_again = ["train", "--data-dir", str(data_dir), "--backbone", "lr", "--seeds", "1", "--epochs", "2"]
    assert main(lr_again) == 0
    assert base_set.stat().st_mtime_ns == built
    assert (artifacts / "lr-none-mlp-seed1" / "model.pt").stat().st_mtime_ns == weights["lr-none-mlp-seed1"]
    # the marts rebuilt with other content (one label): the training set is rebuilt and the finished run retrained
    table = pq.read_table(samples)
    labels = table.column("label").to_pylist()
    write_parquet(table.set_column(table.schema.get_field_index("label"), "label",
                                   pa.array([1 - labels[0], *labels[1:]], table.schema.field("label").type)), samples)  # fmt: skip
    os.utime(samples, ns=(built - 10**9, built - 10**9))  # older than the training set: only content can tell
    assert main(lr_again) == 0
    assert base_set.stat().st_mtime_ns > built
    assert (artifacts / "lr-none-mlp-seed1" / "model.pt").stat().st_mtime_ns > weights["lr-none-mlp-seed1"]
    saved = json.loads((artifacts / "lr-none-mlp-seed1" / "config.json").read_text())
    assert saved["training_set_fingerprint"] == training_set_stamp(base_set)


def test_report_builds_table_2_from_the_finished_runs(data_dir, capsys):
    assert main(["train", "--data-dir", str(data_dir), "--backbone", "lr", "din", "--knowledge", "none", "single",
                 "--seeds", "1", "2", "--epochs", "2"]) == 0  # fmt: skip (finished by the test above when run with it)
    capsys.readouterr()
    assert main(["report", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    reports = data_dir / "reports" / "ml-100k"
    table = (reports / "table2.md").read_text()
    assert table.strip() in out
    lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert lines[0].startswith("| LR | Base |")
    assert lines[1].startswith("| DIN | Base | 2 |") and lines[2].startswith("|  | single (KAR/R2ec) [k1] | 2 |")
    # the knowledge run is named: strategy, model, prompt version, how much of the test split it reached
    assert "- [k1] single · test-model · prompts test-prompts · " in table and "samples with knowledge (parsed + fallback): user train " in table
    assert (reports / "table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unregistered_knowledge_and_missing_runs_are_one_line_errors(data_dir, tmp_path, capsys):
    argv = ["train", "--data-dir", str(data_dir), "--backbone", "din", "--knowledge", "iterative"]
    assert main(argv) == 2
    assert main(["report", "--data-dir", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0].startswith("r4ec: error: feature service 'iterative' is not registered (registered: base, single)")
    assert errors[1].startswith("r4ec: error: no finished runs under")


@pytest.mark.parametrize("knowledge", ["single", "single-tuned"])
def test_knowledge_from_a_sampled_or_tuned_run_is_trained_and_named_as_such(data_dir, knowledge):
    """`--limit N` trains on the knowledge runs made with `knowledge generate --limit N`, never the full ones;
    `single-tuned` on the run made with adapters, never the base models' (both exist here, with other vectors)."""
    run, fill = KnowledgeRun.named(knowledge, 5), 0.5 if knowledge.endswith("-tuned") else 1.0
    sampled = Settings(data_dir=data_dir, knowledge={"limit": 5})
    first = pq.read_table(sampled.marts_dir / "ctr_samples.parquet").to_pandas().groupby("user_id").event_timestamp.min()
    write_vectors(sampled, "user", knowledge, 0, [(u, first[u], fill) for u in first.index[:5]])
    write_vectors(sampled, "item", knowledge, 0, [("1", first.min(), fill)])
    argv = ["train", "--data-dir", str(data_dir), "--knowledge", knowledge, "--limit", "5", "--seeds", "1", "--epochs", "1"]
    assert main(argv) == 0
    config = json.loads((data_dir / "models" / "artifacts" / "ml-100k" / f"din-{run.folder}-mlp-seed1" / "config.json").read_text())
    assert config["knowledge_limit"] == 5 and config["knowledge"] == knowledge and config["feature_service"] == run.service
    assert config["training_set"].endswith(f"training/ml-100k/{run.service}.parquet")
    vectors = pq.read_table(config["training_set"], columns=["user_knowledge_vector"]).column(0)
    assert 0 < vectors.null_count < len(vectors)  # only the 5 sampled users have knowledge
    assert {v[0] for v in vectors.to_pylist() if v is not None} == {fill}  # this run's vectors, not the other's
    assert config["knowledge_run"]["name"] == run.folder and config["knowledge_run"]["limit"] == 5
    shares = config["knowledge_run"]["quality_shares"]["train"]["user"]
    assert 0 < shares["missing"] < 1 and shares["parsed"] == pytest.approx(1 - shares["missing"])


def test_training_before_the_marts_exist_is_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    assert main(["train", "--data-dir", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    samples = empty.resolve() / "marts" / "ml-100k" / "ctr_samples.parquet"
    assert err.strip().splitlines()[-1] == (
        f"r4ec: error: no CTR samples at {samples}: run `r4ec data load` and `r4ec marts build` first"
    )


def test_zero_epochs_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path), "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "r4ec: error: bad training configuration: epochs must be at least 1, not 0"
