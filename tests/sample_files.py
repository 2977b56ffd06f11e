"""Small files in the original formats of ml-1m and Amazon Books 2018, and knowledge-vector parts, written by the
tests themselves."""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from r4ec import layout
from r4ec.config import Settings
from r4ec.data.tables import write_parquet
from r4ec.encoding import mark_complete, vectors_schema, vectors_stamp
from r4ec.layout import KnowledgeRun

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Children's"]
DAY = 86_400
START = 978_300_000  # Dec 2000, like ml-1m


def write_ml1m(folder: Path, n_users: int = 24, n_items: int = 60, seed: int = 7) -> list[tuple]:
    """ratings.dat grouped by user and shuffled within a user, like the original; several ratings share a day
    and their raw timestamps disagree with file order, which the day-truncated ordering must respect.
    Returns the rating tuples (user, item, rating, timestamp) in file order."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ratings = []
    for user in range(1, n_users + 1):
        n = rng.randint(14, 40)
        days = sorted(rng.randint(0, 60) for _ in range(n))
        rows = [
            (user, item, rng.randint(1, 5), START + day * DAY + rng.randint(0, DAY - 1))
            for item, day in zip(rng.sample(range(1, n_items + 1), n), days)
        ]
        rng.shuffle(rows)
        ratings += rows
    lines = [f"{u}::{i}::{r}::{t}" for u, i, r, t in ratings]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    movies = [
        f"{i}::Movie {i}{' é' if i % 7 == 0 else ''}{', The' if i % 5 == 0 else ''} ({1950 + i})::"
        + "|".join(rng.sample(GENRES, rng.randint(1, 3)))
        for i in range(1, n_items + 1)
    ]
    (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    users = [
        f"{u}::{'MF'[u % 2]}::{rng.choice([1, 18, 25, 35, 45, 50, 56])}::{u % 21}::{10000 + u}"
        for u in range(1, n_users + 1)
    ]
    (folder / "users.dat").write_text("\n".join(users) + "\n", encoding="latin-1")
    return ratings


def write_amazon(folder: Path, n_users: int = 120, n_items: int = 40, seed: int = 9) -> list[tuple]:
    """Books_5.json.gz and meta_Books.json.gz with a skewed activity, so a k-core takes several rounds (3 here,
    keeping about 60 users), and enough interactions that every split holds both labels. As in the real files,
    some books lack a brand, a second-level category, or all metadata.
    Returns (reviewerID, asin, overall, unixReviewTime) in file order."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    reviews = []
    for user in range(n_users):
        n = max(2, int(rng.paretovariate(1.2) * 3))
        weights = [1 / (rank + 1) for rank in range(n_items)]
        items = set(rng.choices(range(n_items), weights=weights, k=min(n, n_items)))
        for item in items:
            day = rng.randint(16_000, 16_400)
            reviews.append((f"U{user:03d}", f"B{item:04d}X", float(rng.randint(1, 5)), day * DAY))
    rng.shuffle(reviews)
    with gzip.open(folder / "Books_5.json.gz", "wt", encoding="utf-8") as out:
        for user, asin, overall, stamp in reviews:
            record = {"overall": overall, "verified": True, "reviewerID": user, "asin": asin,
                      "unixReviewTime": stamp, "reviewText": "Fine."}  # fmt: skip
            out.write(json.dumps(record) + "\n")
    with gzip.open(folder / "meta_Books.json.gz", "wt", encoding="utf-8") as out:
        for item in range(n_items - 2):  # the last two items have no metadata
            record = {
                "asin": f"B{item:04d}X",
                "title": f"Book {item}",
                "brand": f"Author {item % 6}" if item % 4 else "",
                "category": ["Books", ["Mystery", "History", "Science"][item % 3], "Sub"] if item % 5 else ["Books"],
            }
            out.write(json.dumps(record) + "\n")
    return reviews


def write_vectors(settings: Settings, entity: str, knowledge: str, part: int, rows: list[tuple], limit: int | None = None) -> None:
    """(entity id, event_timestamp, fill value) -> a vectors part whose vector is all `fill`, in the knowledge run
    `knowledge` (`single`, `iterative-tuned`) marked as complete (its manifest and `_COMPLETE.json` name a test model and
    encoder), beside the knowledge part it is stamped from: Feast registers it."""
    run = KnowledgeRun.named(knowledge, limit if limit is not None else settings.knowledge.limit)
    knowledge_dir = layout.knowledge_dir(settings, entity, run)
    source = knowledge_dir / layout.part_name(part)
    write_parquet(pa.table({f"{entity}_id": [i for i, _, _ in rows]}), source)  # what the vectors are stamped from
    table = pa.Table.from_pylist(
        [{f"{entity}_id": i, "event_timestamp": t, "vector": [fill] * 4, "quality": "parsed", "texts": 1,
          "encoder": "test"} for i, t, fill in rows],
        schema=vectors_schema(entity, vectors_stamp(source, "test")),
    )  # fmt: skip
    target = layout.vectors_dir(settings, entity, run)
    write_parquet(table, target / layout.part_name(part))
    manifest = {"strategy": run.strategy, "limit": run.limit, "model": "test-model", "prompt_version": "test-prompts"}
    (knowledge_dir / layout.MANIFEST).write_text(json.dumps(manifest))
    mark_complete(target, entity, "test")


def marts_of_first_users(source: Settings, target: Settings, users: int):
    """`source`'s marts copied to `target`'s data dir with the CTR samples of the first `users` users only (so a
    training sweep stays quick); returns those samples as a DataFrame."""
    import shutil

    import duckdb

    shutil.copytree(source.marts_dir, target.marts_dir)
    samples = target.marts_dir / "ctr_samples.parquet"
    cut = duckdb.sql(f"from read_parquet('{samples}') where user_id in (select distinct user_id from "
                     f"read_parquet('{samples}') order by user_id limit {users})")  # fmt: skip
    frame = cut.df()
    write_parquet(cut.to_arrow_table(), samples)
    return frame


def flip_test_labels(table: pa.Table) -> pa.Table:
    """Every test sample's label flipped: model choice must not move, test AUC must become 1 - AUC."""
    import pyarrow.compute as pc

    labels = table.column("label")
    flipped = pc.if_else(pc.equal(table.column("split"), "test"), pc.subtract(1, labels), labels)
    return table.set_column(table.schema.get_field_index("label"), "label", flipped)


def ask_chat(text: str) -> list[dict[str, str]]:
    """A one-question conversation under the prompts' system line."""
    from r4ec.knowledge import prompts

    return [{"role": "system", "content": prompts.SYSTEM}, {"role": "user", "content": text}]


def settings_for(ml1m: Settings, data_dir: Path, tiny_model: Path, **knowledge) -> Settings:
    """The small ML-1M marts in a data_dir of the test's own, and a tiny model that writes 8 tokens a step."""
    if not (data_dir / "marts").exists():
        shutil.copytree(ml1m.marts_dir, data_dir / "marts" / "ml-1m")
    options = {"backend": "transformers", "model": str(tiny_model), "dtype": "float32", "max_new_tokens": 8, "partition_size": 4,
               "limit": 10, "spark_master": "local[2]", **knowledge}  # fmt: skip
    return Settings(data_dir=data_dir, dataset="ml-1m", knowledge=options)


def read(settings: Settings, entity: str) -> list[dict]:
    return ds.dataset(layout.knowledge_dir(settings, entity), format="parquet").to_table().to_pylist()
