"""Table 2's arithmetic on run folders written here: grouping, mean ± std, relative improvement, the LR floor; the
long tail and Table 2 on it from saved test predictions."""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from r4ec.ranking import RankingError
from r4ec.ranking.report import below_floor, collect, markdown, write_report
from r4ec.ranking.slices import long_tails, slice_metrics, tail


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
    write_run(tmp_path, "din", "text", 1, 0.77, 0.54)
    write_run(tmp_path, "din", "iterative-r2", 1, 0.79, 0.52)
    write_run(tmp_path, "lr", "none", 1, 0.75, 0.56)
    (tmp_path / "dcn-none-mlp-seed1").mkdir()  # unfinished: no metrics.json
    rows = collect(tmp_path)
    assert [(r.backbone, r.label, r.seeds) for r in rows] == [
        ("lr", "Base", [1]), ("din", "Base", [1, 2]), ("din", "text, no LLM", [1]), ("din", "single (KAR/R2ec)", [1, 2]),
        ("din", "single (KAR/R2ec), experts", [1]), ("din", "iterative (R4ec), 2 rounds", [1]),
        ("din", "iterative (R4ec), tuned actor and reflector", [1]),
    ]  # fmt: skip
    single = rows[3]
    assert single.mean("auc") == pytest.approx(0.81)
    assert single.spread("auc") == f"0.8100 ± {statistics.stdev([0.80, 0.82]):.4f}"
    table = markdown(rows, "t").splitlines()
    assert table[4] == "| LR | Base | 1 | 0.7500 |  | 0.5600 |  |  |"
    gain_auc, gain_ll = (0.81 - 0.77) / 0.77, (0.54 - 0.49) / 0.54
    # per-seed gaps 0.02 and 0.06: mean 0.04 over their spread 0.028 is 1.4 of it, under the 2 that would count
    ratio = statistics.fmean([0.02, 0.06]) / statistics.stdev([0.02, 0.06])
    assert table[7] == (f"|  | single (KAR/R2ec) | 2 | {single.spread('auc')} | {gain_auc:+.2%} | {single.spread('logloss')} | "
                        f"{gain_ll:+.2%} | {ratio:+.1f}σ |")
    assert table[8].endswith("|  |")  # one seed: no spread to measure a gap against
    # the chance of a 2σ gap is counted over the gaps the table shows: only single's has two seeds to measure
    assert "With 2 seeds, ±2σ is a paired t of 2.83 on 1 degrees of freedom (two-sided p = 0.22): of the 1 gap in this " \
           "table, about 0.2 lie beyond" in table[-1]
    assert below_floor(rows) == []


def test_a_base_backbone_at_or_under_logistic_regression_is_flagged(tmp_path):
    write_run(tmp_path, "lr", "none", 1, 0.77, 0.56)
    write_run(tmp_path, "dcn", "none", 1, 0.77, 0.55)
    write_run(tmp_path, "din", "none", 1, 0.78, 0.55)
    write_run(tmp_path, "dien", "single", 1, 0.60, 0.65)  # knowledge rows are not held to the floor
    assert below_floor(collect(tmp_path)) == ["dcn"]


def test_the_long_tail_is_the_least_popular_entities_that_receive_the_share_of_test_samples():
    train = Counter({"a": 1, "b": 2, "c": 5, "d": 10, "e": 2})
    test = Counter({"a": 2, "b": 3, "c": 5, "d": 10})  # e has no test sample: not part of any slice
    assert tail(train, test, 0.2) == {"a", "b"}  # 2 + 3 test samples reach 4 of 20
    assert tail(train, test, 0.1) == {"a"}
    assert tail(Counter({"x": 1, "y": 1}), Counter({"y": 1, "x": 1}), 0.5) == {"x"}  # ties by id


def write_predictions(run, users: list[str], items: list[str], labels: list[int], scores: list[float]) -> None:
    table = pa.table({"sample_id": [str(n) for n in range(len(labels))], "user_id": users, "item_id": items,
                      "label": labels, "score": scores})  # fmt: skip
    pq.write_table(table, run / "predictions.parquet")


def write_ctr_samples(marts) -> tuple[list[tuple[str, str]], list[int]]:
    """Items i1 (2 training-period samples, both train), i2 (3: 1 train + 2 valid), i3 (9); 8 test samples each for
    i1 and i2, 24 for i3: i1 is the 20 % tail (counting train alone, i2 would be). Test samples are numbered as
    `write_predictions` numbers them. Returns the test samples' (user, item) and their labels."""
    samples = {"sample_id": [], "user_id": [], "item_id": [], "split": []}
    for item, train, valid, test in (("i1", 2, 0, 8), ("i2", 1, 2, 8), ("i3", 9, 0, 24)):
        for n in range(train + valid + test):
            k = len(samples["split"])  # a user's samples come in pairs, so each user's test labels hold both classes
            split = "train" if n < train else "valid" if n < train + valid else "test"
            tests_so_far = samples["split"].count("test")
            samples["sample_id"].append(str(tests_so_far) if split == "test" else f"fit{k}")
            samples["user_id"].append(f"u{k // 2 % 4}"), samples["item_id"].append(item), samples["split"].append(split)
    pq.write_table(pa.table(samples), marts / "ctr_samples.parquet")
    tests = [(u, i) for u, i, s in zip(samples["user_id"], samples["item_id"], samples["split"]) if s == "test"]
    return tests, [n % 2 for n in range(len(tests))]


def test_table_2_on_the_long_tail_comes_from_the_saved_predictions(tmp_path):
    marts, artifacts = tmp_path / "marts", tmp_path / "artifacts"
    marts.mkdir(), artifacts.mkdir()
    tests, labels = write_ctr_samples(marts)
    rng = random.Random(0)
    for seed in (1, 2):
        scores = [rng.random() for _ in tests]
        write_run(artifacts, "din", "none", seed, 0.7, 0.6)
        write_predictions(artifacts / f"din-none-mlp-seed{seed}", [u for u, _ in tests], [i for _, i in tests], labels, scores)
        if seed == 1:
            inside = [n for n, (_, i) in enumerate(tests) if i == "i1"]
            expected = roc_auc_score([labels[n] for n in inside], [scores[n] for n in inside])
    write_run(artifacts, "lr", "none", 1, 0.7, 0.6)  # trained before predictions were saved

    report = write_report(artifacts, tmp_path / "out", "toy", marts / "ctr_samples.parquet")
    text = report.long_tail_path.read_text()
    assert "long-tail items: the 1 items with the fewest training-period samples that together receive 20% of the test samples (8)" in text
    assert "2 of 3 finished runs (runs that saved no test predictions, or whose slice holds one class only, are left out)" in text
    items_table = text.split("### ")[1]
    din = next(r for r in collect(artifacts, lambda d: slice_metrics(d, long_tails(marts / "ctr_samples.parquet")[0])))
    assert din.seeds == [1, 2] and din.auc[0] == pytest.approx(expected)
    assert f"| DIN | Base | 2 | {din.spread('auc')} |" in items_table and "| LR |" not in items_table
    assert not (tmp_path / "out" / "ordering.md").exists()  # Base only: no ordering to read


def test_predictions_for_other_test_samples_than_the_marts_hold_now_are_refused(tmp_path):
    marts, artifacts = tmp_path / "marts", tmp_path / "artifacts"
    marts.mkdir(), artifacts.mkdir()
    tests, labels = write_ctr_samples(marts)
    write_run(artifacts, "din", "none", 1, 0.7, 0.6)
    write_predictions(artifacts / "din-none-mlp-seed1", [u for u, _ in tests[1:]], [i for _, i in tests[1:]], labels[1:],
                      [0.5] * (len(tests) - 1))  # one test sample short: trained on marts built before a change
    with pytest.raises(RankingError, match="din-none-mlp-seed1: its test predictions are for other samples"):
        write_report(artifacts, tmp_path / "out", "toy", marts / "ctr_samples.parquet")


def test_a_report_leaves_no_long_tail_or_probe_file_from_an_earlier_one(tmp_path):
    artifacts, out = tmp_path / "artifacts", tmp_path / "out"
    artifacts.mkdir(), out.mkdir()
    write_run(artifacts, "din", "none", 1, 0.7, 0.6)
    for stale in ("long_tail.md", "knowledge_probe.md"):
        (out / stale).write_text("from an earlier report\n")
    report = write_report(artifacts, out, "toy", tmp_path / "no-marts.parquet", tmp_path / "no-training-sets")
    assert report.long_tail_path is None and report.probe_path is None
    assert not (out / "long_tail.md").exists() and not (out / "knowledge_probe.md").exists()


def test_a_run_is_labelled_by_its_model_or_as_having_none():
    from r4ec.knowledge.runs import label

    model = "smollm2-135m-instruct@sha256:" + "1" * 64
    about = {"name": "iterative", "digest": "f" * 64, "user": {"model": model, "prompt_version": "v3"}}
    assert label(about) == f"iterative · smollm2-135m-instruct@{'1' * 12} · prompts v3 · {'f' * 12}"
    text = {**about, "name": "text", "user": {"model": None, "prompt_version": "v3"}}
    assert label(text).startswith("text · no LLM · prompts v3")
    mpnet = {**about, "name": "iterative-enc-allmpnetbasev2",
             "user": {**about["user"], "encoder": "all-mpnet-base-v2@sha256:" + "2" * 64}}  # fmt: skip
    assert f" · prompts v3 · encoder all-mpnet-base-v2@{'2' * 12} · " in label(mpnet)  # Table 4: which encoder made it


def test_each_ablation_is_read_against_iterative_backbone_by_backbone(tmp_path):
    from r4ec.ranking.report import ablations

    for seed, (ref, single, mpnet) in enumerate([(0.80, 0.78, 0.805), (0.81, 0.785, 0.80), (0.79, 0.772, 0.795)], 1):
        for backbone, shift in (("din", 0.0), ("dcn", 0.01)):
            write_run(tmp_path, backbone, "iterative", seed, ref + shift, 0.5)
            write_run(tmp_path, backbone, "single", seed, single + shift, 0.5)
        write_run(tmp_path, "din", "iterative-enc-allmpnetbasev2", seed, mpnet, 0.5)
        write_run(tmp_path, "din", "none", seed, 0.7, 0.6)
    rows = collect(tmp_path)
    text = ablations(rows).splitlines()
    assert text[2] == "| Variant | What it changes | DIN | DCN | mean | > 2σ ahead / behind |"
    single = [0.78 - 0.80, 0.785 - 0.81, 0.772 - 0.79]
    sigmas = statistics.fmean(single) / statistics.stdev(single)
    assert sigmas < -2
    assert text[4] == (f"| single (KAR/R2ec) · single | Fig. 6: no reflect / refine round | {statistics.fmean(single):+.4f} "
                       f"{sigmas:+.1f}σ | {statistics.fmean(single):+.4f} {sigmas:+.1f}σ | {statistics.fmean(single):+.4f} "
                       "| 0 / 2 of 2 |")  # fmt: skip
    mpnet = [0.005, -0.01, 0.005]
    assert text[5].startswith(f"| iterative (R4ec) · iterative-enc-allmpnetbasev2 | Table 4: encoder allmpnetbasev2 | "
                              f"{statistics.fmean(mpnet):+.4f} ")  # fmt: skip
    assert text[5].endswith(" |  | " + f"{statistics.fmean(mpnet):+.4f} | 0 / 0 of 1 |")  # DIN only; within its spread
    assert len(text) == 8 and ablations([r for r in rows if r.knowledge != "iterative"]) == ""
    # what 2σ means with 3 seeds, by a paired t-test on the per-seed gaps (scipy's own, not the formula under test)
    from scipy.stats import ttest_rel

    t, p = ttest_rel([0.78, 0.785, 0.772], [0.80, 0.81, 0.79])
    assert t == pytest.approx(sigmas * 3**0.5)
    assert "With 3 seeds, ±2σ is a paired t of 3.46 on 2 degrees of freedom (two-sided p = 0.07): of the 2 gaps in a " \
           "row, about 0.1 lie beyond ±2σ by chance alone and at least one does with probability 14%" in text[7]  # 1 - (1 - 0.0742)^2


def test_the_papers_ordering_is_read_per_table_with_each_step_against_its_seed_spread(tmp_path):
    from r4ec.ranking.report import ordering

    # DIN in order with steady steps; DCN with single under Base; DEEPFM lacks iterative and is not counted
    for seed, jitter in enumerate((0.0, 0.002, -0.001), 1):
        for knowledge, din, dcn in (("none", 0.70, 0.75), ("single", 0.72, 0.74), ("iterative", 0.75, 0.76)):
            write_run(tmp_path, "din", knowledge, seed, din + jitter, 0.5)
            write_run(tmp_path, "dcn", knowledge, seed, dcn + (jitter if knowledge == "none" else -jitter), 0.5)
        write_run(tmp_path, "deepfm", "none", seed, 0.7, 0.5)
        write_run(tmp_path, "deepfm", "single", seed, 0.8, 0.5)
    rows = collect(tmp_path)
    text = ordering([("all", rows), ("long-tail items", [r for r in rows if r.backbone == "din"])]).splitlines()
    assert text[0] == "### The paper's ordering: Base < single (KAR/R2ec) < iterative (R4ec)"
    # single - Base: DIN +0.02 at every seed (no spread: +inf σ, ahead); DCN -0.01 - 2·jitter (behind, beyond 2σ)
    dcn = [-0.01 - 2 * j for j in (0.0, 0.002, -0.001)]
    assert statistics.fmean(dcn) / statistics.stdev(dcn) < -2
    single_base = statistics.fmean([0.02, statistics.fmean(dcn)])
    iterative_single = statistics.fmean([0.03, 0.02])  # DCN's step from single to iterative is +0.02 at every seed
    iterative_base = statistics.fmean([0.05, statistics.fmean(d + 0.02 for d in dcn)])
    assert text[4] == (f"| all | 1 of 2 (DIN) | {single_base:+.4f} · 1 / 1 | {iterative_single:+.4f} · 2 / 0 | "
                       f"{iterative_base:+.4f} · 2 / 0 |")  # fmt: skip
    assert text[5] == "| long-tail items | 1 of 1 (DIN) | +0.0200 · 1 / 0 | +0.0300 · 1 / 0 | +0.0500 · 1 / 0 |"
    assert "of the 2 gaps behind a cell, about 0.1 lie beyond ±2σ by chance alone" in text[7]
    assert ordering([("all", [r for r in rows if r.knowledge != "iterative"])]) == ""


def test_the_report_reads_the_ordering_on_all_test_samples_and_on_each_long_tail(tmp_path):
    marts, artifacts = tmp_path / "marts", tmp_path / "artifacts"
    marts.mkdir(), artifacts.mkdir()
    tests, labels = write_ctr_samples(marts)
    rng = random.Random(1)
    for knowledge in ("none", "single", "iterative"):
        for seed in (1, 2):
            write_run(artifacts, "din", knowledge, seed, 0.7, 0.6)
            scores = [rng.random() for _ in tests]
            write_predictions(artifacts / f"din-{knowledge}-mlp-seed{seed}", [u for u, _ in tests], [i for _, i in tests], labels, scores)
    write_report(artifacts, tmp_path / "out", "toy", marts / "ctr_samples.parquet")
    lines = (tmp_path / "out" / "ordering.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in lines[4:7]] == ["| all", "| long-tail items", "| long-tail users"]
    assert lines[4].startswith("| all | 0 of 1 | +0.0000 · 0 / 0 |")  # the saved metrics: every AUC 0.7
