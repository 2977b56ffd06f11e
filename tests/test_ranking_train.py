"""Training on a training set that real Feast retrieves from the real ml-100k marts."""

from __future__ import annotations

import json
import math
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

from r4ec.config import Settings
from r4ec.features import store
from r4ec.marts import build_marts
from r4ec.ranking import RankingError
from r4ec.ranking.data import Vocab, to_tensors
from r4ec.ranking.experiment import check_history_length, is_done, train_configs
from r4ec.ranking.runs import load_run
from r4ec.ranking.train import (
    BACKBONES,
    OPTIONS_FILE,
    TrainConfig,
    build_model,
    default_options,
    evaluate,
    save,
    split,
    split_tensors,
    train,
)
from tests.sample_files import flip_test_labels

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def training_table(ml100k, tmp_path_factory) -> pa.Table:
    """The base training set of ml-100k, cut to 300 users to keep the tests quick."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("ranking"))
    shutil.copytree(ml100k.marts_dir, settings.marts_dir)
    store.apply(settings)
    frame = store.training_set(settings, store.ctr_samples(settings), "base")
    users = sorted(frame.user_id.unique())[:300]
    return pa.Table.from_pandas(frame[frame.user_id.isin(users)], preserve_index=False)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_training_lowers_validation_loss(training_table, tmp_path, backbone):
    config = TrainConfig(backbone=backbone, epochs=2, patience=2, batch_size=512)
    vocab = Vocab.fit(split(training_table, "train"))
    torch.manual_seed(config.seed)  # the initial weights train() starts from
    untrained = evaluate(build_model(config, vocab, 0), to_tensors(split(training_table, "valid"), vocab, config.history_length))
    model, result = train(training_table, config)
    assert result.valid["logloss"] < untrained["logloss"]
    assert result.valid["auc"] > 0.6 and 0.5 < result.test["auc"] <= 1.0
    run = save(model, result, tmp_path)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["best_epoch"] == result.best_epoch and (run / "model.pt").is_file()
    assert json.loads((run / "config.json").read_text())["feature_service"] == "base"
    scored = pq.read_table(run / "predictions.parquet").to_pandas()  # the test split, recomputable from the run
    test = split(training_table, "test").to_pandas()
    assert list(scored.sample_id) == list(test.sample_id) and list(scored.label) == list(test.label)
    assert roc_auc_score(scored.label, scored.score) == pytest.approx(saved["test"]["auc"], abs=1e-12)


def test_model_choice_never_reads_the_test_split(training_table):
    """Flip every test label: the chosen epoch and the validation figures must not move; the test figures must."""
    config = TrainConfig(backbone="lr", epochs=4, patience=4, batch_size=512, learning_rate=0.05)
    _, clean = train(training_table, config)
    _, corrupted = train(flip_test_labels(training_table), config)
    assert clean.best_epoch == corrupted.best_epoch
    assert clean.valid == corrupted.valid and clean.history == corrupted.history
    assert clean.test["auc"] == pytest.approx(1 - corrupted.test["auc"])


def feast_training_set(marts: Settings, data_dir) -> tuple[Settings, pa.Table]:
    """The marts copied to a fresh data dir, the feature repo applied, and the base training set written by Feast
    as `r4ec train` gets it."""
    settings = marts.model_copy(update={"data_dir": data_dir})
    shutil.copytree(marts.marts_dir, settings.marts_dir)
    store.apply(settings)
    path, _ = store.write_training_set(settings, "base")
    return settings, pq.read_table(path)


@pytest.fixture(scope="module")
def small_sets(ml1m, amazon, tmp_path_factory) -> dict[str, tuple[Settings, pa.Table]]:
    """Feast training sets of the marts built from the small ML-1M and Amazon-2018 format files."""
    return {name: feast_training_set(marts, tmp_path_factory.mktemp(name)) for name, marts in
            (("ml-1m", ml1m), ("amazon-books-2018", amazon))}  # fmt: skip


def sizes(table: pa.Table) -> dict[str, dict[str, int]]:
    return {name: {"rows": split(table, name).num_rows, "positives": pc.sum(split(table, name).column("label")).as_py()}
            for name in ("train", "valid", "test")}  # fmt: skip


@pytest.mark.parametrize("dataset", ["ml-1m", "amazon-books-2018"])
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_trains_on_small_ml1m_and_amazon_marts(small_sets, tmp_path, dataset, backbone):
    """Books lack brands, categories and every demographic: missing values are padding, and each backbone trains."""
    settings, table = small_sets[dataset]
    if dataset == "amazon-books-2018":
        assert {None} == set(table.column("age").to_pylist()) and table.column("brand").null_count > 0
        assert table.column("category").null_count > 0
    (config,) = train_configs(settings, [backbone], epochs=4, patience=4, batch_size=64, dim=8)
    assert config.history_length == settings.history_length
    model, result = train(table, config)
    assert result.splits == sizes(table)
    assert all(0 < size["positives"] < size["rows"] for size in result.splits.values())
    assert all(0 <= m["auc"] <= 1 and math.isfinite(m["logloss"]) for m in (result.valid, result.test))
    assert result.history[-1]["train_logloss"] < result.history[0]["train_logloss"]  # it learns the train split
    run = save(model, result, tmp_path)
    assert json.loads((run / "metrics.json").read_text())["splits"] == sizes(table)
    assert json.loads((run / "config.json").read_text())["history_length"] == settings.history_length


def test_history_length_comes_from_the_settings_the_marts_were_built_with(ml1m, tmp_path):
    """Marts built with K = 20: the sweep's configs take 20 from the settings and the model sees 20-wide
    histories; a config with another K is refused, never cut to fit."""
    settings = ml1m.model_copy(update={"data_dir": tmp_path / "marts", "history_length": 20})
    shutil.copytree(ml1m.raw_dir, settings.raw_dir)
    build_marts(settings)
    settings, table = feast_training_set(settings, tmp_path / "k20")
    assert pc.max(pc.list_value_length(table.column("history_item_ids"))).as_py() == 20

    configs = train_configs(settings, ["lr", "din"], epochs=1)
    assert [c.history_length for c in configs] == [20, 20]
    check_history_length(settings, configs)
    _, tensors, _ = split_tensors(table, configs[1])
    assert tensors["train"].history.shape[1:] == (20, 3) and tensors["train"].history_mask.sum(1).max() == 20
    model, result = train(table, configs[1])
    run = save(model, result, tmp_path / "runs")
    assert json.loads((run / "config.json").read_text())["history_length"] == 20

    ten = TrainConfig(backbone="din", epochs=1)  # the Settings default, K = 10
    with pytest.raises(RankingError, match=r"history_length 10, but the marts in .* were built with 20"):
        check_history_length(settings, [ten])
    with pytest.raises(RankingError, match=r"histories of up to 20 items, longer than history_length 10"):
        train(table, ten)
    with pytest.raises(RankingError, match=r"history_length 20, but the marts in .* were built with 10"):
        check_history_length(ml1m, train_configs(ml1m.model_copy(update={"history_length": 20}), ["din"]))


def test_a_split_with_one_class_is_a_ranking_error_that_names_it(small_sets):
    """AUC needs both labels: a validation split of negatives only fails before training, with its counts."""
    _, table = small_sets["ml-1m"]
    valid_positive = pc.and_(pc.equal(table.column("split"), "valid"), pc.equal(table.column("label"), 1))
    negatives_only = table.filter(pc.invert(valid_positive))
    rows = sizes(negatives_only)["valid"]["rows"]
    with pytest.raises(RankingError, match=rf"^the valid split has {rows} rows, 0 of them positive: it needs both"):
        train(negatives_only, TrainConfig(backbone="lr", epochs=1))


@pytest.mark.parametrize(
    "options, message",
    [({"epochs": 0}, "epochs must be at least 1, not 0"), ({"batch_size": -1}, "batch_size must be at least 1"),
     ({"backbone": "xgboost"}, "unknown backbone 'xgboost'"), ({"learning_rate": 0.0}, "learning_rate must be positive"),
     ({"connector": "moe"}, "unknown connector 'moe'"),
     ({"backbone": "dcn", "options": {"width": 3}}, "dcn: no option 'width'"),
     ({"backbone": "autoint", "options": {"heads": "2"}}, "heads = '2' is not a int")],
)  # fmt: skip
def test_a_configuration_that_cannot_train_is_a_ranking_error(options, message):
    with pytest.raises(RankingError, match=rf"^bad training configuration: .*{message}"):
        TrainConfig(**options)


def test_sweep_grid_expands_all_and_keeps_lr_on_base_features(ml1m):
    configs = train_configs(ml1m, ["lr", "all"], ["none", "single"], [1, 2], connector="experts", epochs=None)
    assert {c.backbone for c in configs} == set(BACKBONES)
    lr = [c for c in configs if c.backbone == "lr"]
    assert [(c.knowledge, c.connector, c.seed) for c in lr] == [("none", "mlp", 1), ("none", "mlp", 2)]
    others = [c for c in configs if c.backbone != "lr"]
    assert len(others) == (len(BACKBONES) - 1) * 2 * 2 and {c.connector for c in others} == {"experts"}
    assert {c.epochs for c in configs} == {TrainConfig().epochs}  # None: the default
    assert [c.seed for c in train_configs(ml1m.model_copy(update={"seed": 7}), ["din"])] == [7]


def test_backbones_toml_writes_out_every_constructor_default():
    """models/backbones.toml says its values are the constructors' defaults: runs saved before options were
    recorded count as trained with those defaults (r4ec.ranking.train.recorded_config)."""
    import tomllib

    tables = tomllib.loads(OPTIONS_FILE.read_text())
    assert {name: tables.get(name, {}) for name in BACKBONES} == {name: default_options(name) for name in BACKBONES}
    assert TrainConfig(backbone="dcn", options={"crosses": 1}).options == {**default_options("dcn"), "crosses": 1}


def test_a_run_is_rebuilt_with_the_options_it_recorded_and_only_those_count_as_done(training_table, tmp_path):
    one_cross = TrainConfig(backbone="dcn", epochs=1, batch_size=512, options={"crosses": 1})
    model, result = train(training_table, one_cross)
    assert len(model.cross_weights) == 1
    run = save(model, result, tmp_path, training_set_fingerprint="stamp")
    assert json.loads((run / "config.json").read_text())["options"]["crosses"] == 1
    assert len(load_run(run).model.cross_weights) == 1  # the recorded value, not the file's 3
    assert is_done(run, one_cross, "stamp") and not is_done(run, TrainConfig(backbone="dcn", epochs=1, batch_size=512), "stamp")

    defaults = TrainConfig(backbone="dcn", epochs=1, batch_size=512)
    model, result = train(training_table, defaults)
    run = save(model, result, tmp_path, training_set_fingerprint="stamp")
    saved = json.loads((run / "config.json").read_text())
    del saved["options"]  # as runs were saved before options were recorded: built with the constructor's defaults
    (run / "config.json").write_text(json.dumps(saved))
    assert is_done(run, defaults, "stamp") and not is_done(run, one_cross, "stamp")
    assert len(load_run(run).model.cross_weights) == 3
