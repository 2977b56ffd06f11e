"""The long tail, where the paper reports its strongest online gain, defined by traffic so that it is large enough to
measure: the least-popular items (popularity = training-period samples: train and valid, which is carved from each
user's training positions) that together receive `share` of the test samples, and likewise the users with the fewest
training-period samples. On ml-100k at 20 % that is about a thousand items; the least-popular 20 % of items would
hold only a few hundred test samples, too few to tell runs apart.

A run's metrics on a slice come from its saved test predictions (`predictions.parquet`), so any slice can be
recomputed from the runs without retraining."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from r4ec.ranking import RankingError
from r4ec.ranking.train import metrics

TAIL_SHARE = 0.2
TRAINING_PERIOD = ("train", "valid")


@dataclass(frozen=True)
class Slice:
    name: str  # "long-tail items"
    column: str  # the predictions' column the members are values of
    members: frozenset[str]
    test_samples: int  # test samples in the slice
    share: float  # of all test samples
    test_ids: frozenset[str]  # every test sample of the CTR samples it was cut from: a run's predictions must match

    def describe(self) -> str:
        kind = "items" if self.column == "item_id" else "users"
        return (f"{self.name}: the {len(self.members):,} {kind} with the fewest training-period samples that together "
                f"receive {self.share:.0%} of the test samples ({self.test_samples:,}); ties broken by id")  # fmt: skip


def tail(train_counts: Counter, test_counts: Counter, share: float) -> set[str]:
    """The least-popular entities (fewest training-period samples, ties by id as text) until they hold `share` of the
    test samples."""
    wanted, held, chosen = share * sum(test_counts.values()), 0, set()
    for entity in sorted(test_counts, key=lambda e: (train_counts.get(e, 0), e)):
        if held >= wanted:
            break
        chosen.add(entity)
        held += test_counts[entity]
    return chosen


def long_tails(ctr_samples: Path, share: float = TAIL_SHARE) -> list[Slice]:
    """The long-tail items and the long-tail users of a dataset's CTR samples."""
    table = pq.read_table(ctr_samples, columns=["sample_id", "user_id", "item_id", "split"]).to_pydict()
    test_ids = frozenset(i for i, s in zip(table["sample_id"], table["split"]) if s == "test")
    slices = []
    for column, name in (("item_id", "long-tail items"), ("user_id", "long-tail users")):
        train = Counter(e for e, s in zip(table[column], table["split"]) if s in TRAINING_PERIOD)
        test = Counter(e for e, s in zip(table[column], table["split"]) if s == "test")
        members = tail(train, test, share)
        held = sum(test[e] for e in members)
        slices.append(Slice(name, column, frozenset(members), held, held / sum(test.values()), test_ids))
    return slices


def slice_metrics(run_dir: Path, chosen: Slice) -> dict[str, float] | None:
    """Test AUC and LogLoss of a run on a slice; None when the run saved no predictions (trained before they were) or
    the slice holds one class only (no AUC). Refuses predictions made for other test samples than the slice's: the
    marts were rebuilt since the run trained."""
    path = run_dir / "predictions.parquet"
    if not path.is_file():
        return None
    rows = pq.read_table(path, columns=["sample_id", chosen.column, "label", "score"]).to_pydict()
    if set(rows["sample_id"]) != chosen.test_ids:
        raise RankingError(f"{run_dir.name}: its test predictions are for other samples than the CTR samples hold now "
                           "(the marts changed since it trained): train it again with `r4ec train`")  # fmt: skip
    inside = np.array([value in chosen.members for value in rows[chosen.column]])
    labels = np.asarray(rows["label"])[inside]
    return metrics(labels, np.asarray(rows["score"])[inside]) if len(set(labels.tolist())) == 2 else None
