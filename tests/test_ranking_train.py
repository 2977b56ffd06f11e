"""Training on a training set that real Feast retrieves from the real ml-100k marts."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from r4ec.config import Settings
from r4ec.features import store
from r4ec.ranking.data import Vocab, to_tensors
from r4ec.ranking.train import BACKBONES, TrainConfig, build_model, evaluate, save, split, train

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
    untrained = evaluate(build_model(config, vocab, 0), to_tensors(split(training_table, "valid"), vocab, 10))
    model, result = train(training_table, config)
    assert result.valid["logloss"] < untrained["logloss"]
    assert result.valid["auc"] > 0.6 and 0.5 < result.test["auc"] <= 1.0
    run = save(model, result, tmp_path)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["best_epoch"] == result.best_epoch and (run / "model.pt").is_file()
    assert json.loads((run / "config.json").read_text())["feature_service"] == "base"


def test_model_choice_never_reads_the_test_split(training_table):
    """Flip every test label: the chosen epoch and the validation figures must not move; the test figures must."""
    config = TrainConfig(backbone="lr", epochs=4, patience=4, batch_size=512, learning_rate=0.05)
    test_rows = pc.equal(training_table.column("split"), "test")
    flipped = training_table.set_column(
        training_table.schema.get_field_index("label"), "label",
        pc.if_else(test_rows, pc.subtract(1, training_table.column("label")), training_table.column("label")),
    )  # fmt: skip
    _, clean = train(training_table, config)
    _, corrupted = train(flipped, config)
    assert clean.best_epoch == corrupted.best_epoch
    assert clean.valid == corrupted.valid and clean.history == corrupted.history
    assert clean.test["auc"] == pytest.approx(1 - corrupted.test["auc"])
