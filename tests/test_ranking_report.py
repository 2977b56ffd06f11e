"""Table 2's arithmetic on run folders written here: grouping, mean ± std, relative improvement, the LR floor."""

from __future__ import annotations

import json
import statistics

import pytest

from r4ec.ranking.report import below_floor, collect, markdown


def write_run(root, backbone: str, knowledge: str, seed: int, auc: float, logloss: float, connector: str = "mlp"):
    run = root / f"{backbone}-{knowledge}-{connector}-seed{seed}"
    run.mkdir()
    config = {"backbone": backbone, "knowledge": knowledge, "connector": connector, "seed": seed}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps({"test": {"auc": auc, "logloss": logloss}}))


def test_rows_are_grouped_ordered_and_compared_with_their_own_base(tmp_path):
    write_run(tmp_path, "din", "single", 1, 0.80, 0.50)
    write_run(tmp_path, "din", "single", 2, 0.82, 0.48)
    write_run(tmp_path, "din", "none", 1, 0.78, 0.55)
    write_run(tmp_path, "din", "none", 2, 0.76, 0.53)
    write_run(tmp_path, "din", "single", 1, 0.70, 0.60, connector="experts")
    write_run(tmp_path, "din", "iterative-tuned", 1, 0.79, 0.52)
    write_run(tmp_path, "lr", "none", 1, 0.75, 0.56)
    (tmp_path / "dcn-none-mlp-seed1").mkdir()  # unfinished: no metrics.json
    rows = collect(tmp_path)
    assert [(r.backbone, r.label, r.seeds) for r in rows] == [
        ("lr", "Base", [1]), ("din", "Base", [1, 2]), ("din", "single (KAR/R2ec)", [1, 2]),
        ("din", "single (KAR/R2ec), experts", [1]), ("din", "iterative (R4ec), tuned actor and reflector", [1]),
    ]  # fmt: skip
    single = rows[2]
    assert single.mean("auc") == pytest.approx(0.81)
    assert single.spread("auc") == f"0.8100 ± {statistics.stdev([0.80, 0.82]):.4f}"
    table = markdown(rows, "t").splitlines()
    assert table[4] == "| LR | Base | 1 | 0.7500 |  | 0.5600 |  |"
    gain_auc, gain_ll = (0.81 - 0.77) / 0.77, (0.54 - 0.49) / 0.54
    assert table[6] == f"|  | single (KAR/R2ec) | 2 | {single.spread('auc')} | {gain_auc:+.2%} | {single.spread('logloss')} | {gain_ll:+.2%} |"
    assert below_floor(rows) == []


def test_a_base_backbone_at_or_under_logistic_regression_is_flagged(tmp_path):
    write_run(tmp_path, "lr", "none", 1, 0.77, 0.56)
    write_run(tmp_path, "dcn", "none", 1, 0.77, 0.55)
    write_run(tmp_path, "din", "none", 1, 0.78, 0.55)
    write_run(tmp_path, "dien", "single", 1, 0.60, 0.65)  # knowledge rows are not held to the floor
    assert below_floor(collect(tmp_path)) == ["dcn"]
