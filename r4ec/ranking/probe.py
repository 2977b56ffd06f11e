"""What the knowledge holds on its own: a logistic regression on a run's knowledge vectors alone, no ids and no history.

Fitted on the train split of the run's point-in-time training set (the one its CTR models trained on) and scored on
the test split, on three views: the user's vector, the item's, and both (the two vectors and their element-wise
product, which lets a linear model score how well a user's vector matches an item's). A sample without a vector as of
its time gets zeros and a flag of its own. AUC 0.5 is knowledge that says nothing about clicks; Table 2's LR on ids is
the yardstick for the rest. Results are kept per training set stamp, so a report recomputes only what changed, and a
run whose training set is not here (a study continued on a fresh machine) is shown from the result kept for the stamp
its Table 2 rows were trained on.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from r4ec.features.store import training_set_stamp
from r4ec.ranking.data import label_column, vector_column
from r4ec.ranking.train import metrics

VIEWS = ("user", "item", "both")
ENTITIES_OF = {"user": ("user",), "item": ("item",), "both": ("user", "item")}  # whose vectors a view needs
PROBE_VERSION = "r4ec-probe-v1"  # change when the features or the fit change: cached results are then redone
L2 = 1e-4


Vectors = dict[str, tuple[np.ndarray, np.ndarray]]  # entity -> ([rows, D] vectors, [rows] present)


def vectors(table: pa.Table, width: int) -> Vectors:
    """Both entities' knowledge vectors of a split, read once for all three views."""
    return {entity: vector_column(table, f"{entity}_knowledge_vector", width) for entity in ("user", "item")}


def features(found: Vectors, view: str) -> np.ndarray:
    """[rows, F] float32: the view's vectors, their product for `both`, and a present flag per vector."""
    (user, has_user), (item, has_item) = found["user"], found["item"]
    parts = {"user": [user, has_user[:, None]], "item": [item, has_item[:, None]],
             "both": [user, item, user * item, has_user[:, None], has_item[:, None]]}[view]  # fmt: skip
    return np.concatenate([p.astype(np.float32) for p in parts], axis=1)


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0) -> torch.nn.Linear:
    """L2-regularised logistic regression, full batch (L-BFGS): convex, so the seed only fixes the start."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 1)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs).squeeze(1), labels)
        value = value + L2 * model.weight.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return model


def _present(table: pa.Table, entity: str) -> int:
    return int(table.column(f"{entity}_knowledge_vector").is_valid().to_numpy(zero_copy_only=False).sum())


def probe(table: pa.Table) -> dict:
    """Per view: the test AUC and LogLoss of the fit, or None where no train sample has the view's vectors; and how
    many samples have each vector."""
    train, test = (table.filter(pc.equal(table.column("split"), name)) for name in ("train", "test"))
    result: dict = {"train_samples": train.num_rows, "test_samples": test.num_rows}
    for entity in ("user", "item"):
        result[f"train_with_{entity}_vector"] = _present(train, entity)
        result[f"test_with_{entity}_vector"] = _present(test, entity)
    lengths = [pc.drop_null(pc.list_value_length(table.column(f"{e}_knowledge_vector"))) for e in ("user", "item")]
    width = next((column[0].as_py() for column in lengths if len(column)), 0)
    found = {"train": vectors(train, width), "test": vectors(test, width)} if width else {}
    for view in VIEWS:
        if not width or not all(result[f"train_with_{entity}_vector"] for entity in ENTITIES_OF[view]):
            result[view] = None
            continue
        model = fit(features(found["train"], view), label_column(train))
        with torch.no_grad():
            logits = model(torch.from_numpy(features(found["test"], view))).squeeze(1)
        result[view] = metrics(label_column(test), torch.sigmoid(logits).numpy().astype(np.float64))
    return result


def result_path(cache_dir: Path, service: str) -> Path:
    """A folder per service: the archive keeps and restores each on its own (r4ec.archive)."""
    return cache_dir / service / "result.json"


def kept_result(cache_dir: Path, service: str, stamp: str | None) -> dict | None:
    """The probe result kept for the service's training set with this stamp, by this version of the probe; else None."""
    cached = result_path(cache_dir, service)
    if stamp is None or not cached.is_file():
        return None
    found = json.loads(cached.read_text())
    return found["result"] if found.get("key") == {"stamp": stamp, "version": PROBE_VERSION} else None


def probe_training_set(path: Path, cache_dir: Path) -> dict:
    """`probe` of the training set at `path`, reused from `cache_dir` while the set's stamp and the probe's version
    are the ones it was computed from."""
    import pyarrow.parquet as pq

    key = {"stamp": training_set_stamp(path), "version": PROBE_VERSION}
    if (found := kept_result(cache_dir, path.stem, key["stamp"])) is not None:
        return found
    cached = result_path(cache_dir, path.stem)
    result = probe(pq.read_table(path))
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"key": key, "result": result}, indent=2))
    return result


def markdown(results: dict[str, dict], dataset: str, rebuilt: Collection[str] = ()) -> str:
    """The table; a run in `rebuilt` is marked: its training set here is not the one its Table 2 rows trained on."""
    lines = [
        f"## What the knowledge holds on its own, {dataset}",
        "",
        "Test AUC of a logistic regression on the knowledge vectors alone (fitted on the train split of the run's "
        "training set): the user's vector, the item's, both (and their product). 0.5: nothing about clicks.",
        "",
        "| knowledge run | test samples | with a user vector | with an item vector | AUC user | AUC item | AUC both |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for service, r in results.items():
        n = max(r["test_samples"], 1)
        aucs = " | ".join(f"{r[view]['auc']:.4f}" if r[view] else "n/a" for view in VIEWS)
        mark = " †" if service in rebuilt else ""
        lines.append(f"| {service}{mark} | {r['test_samples']:,} | {r['test_with_user_vector'] / n:.0%} | "
                     f"{r['test_with_item_vector'] / n:.0%} | {aucs} |")  # fmt: skip
    note = (" †: the training set probed is not the one this run's Table 2 rows were trained on (it was built again "
            "since): train the run again to compare them." if rebuilt else "")  # fmt: skip
    return "\n".join(lines + ["", "n/a: no train sample has that vector." + note])
