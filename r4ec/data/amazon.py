"""Amazon Books (2018 release): Books_5.json.gz reviews and meta_Books.json.gz, both one JSON object per line.

Users and items are then cut to a k-core (users with >= 60 interactions, items with >= 40, repeated until both
hold), which gives the paper's 11,906 users and 17,332 items.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from r4ec.console import terminal
from r4ec.data.schema import RATINGS
from r4ec.data.tables import LoadSummary, Rejects, RowError, as_id, as_rating, numbered_lines, write_dataset

REVIEWS_FILE = "Books_5.json.gz"
META_FILE = "meta_Books.json.gz"
_CHUNK = 500_000


def _json_object(line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise RowError(f"invalid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise RowError("line is not a JSON object")
    return record


def _field(record: dict, name: str):
    if record.get(name) is None:
        raise RowError(f"missing field {name}")
    return record[name]


def _id(record: dict, name: str) -> str:
    """reviewerID and asin are JSON strings of printable characters without spaces."""
    value = _field(record, name)
    if not isinstance(value, str):
        raise RowError(f"{name} is not a string: {value!r}")
    return as_id(value, name)


def _review(record: dict) -> tuple[str, str, float, int]:
    stamp = _field(record, "unixReviewTime")
    if not isinstance(stamp, int) or isinstance(stamp, bool) or stamp < 0:
        raise RowError(f"unixReviewTime is not a non-negative integer: {stamp!r}")
    return (
        _id(record, "reviewerID"),
        _id(record, "asin"),
        as_rating(str(_field(record, "overall"))),
        stamp,
    )


def _read_reviews(path: Path, staging: Path, rejects: Rejects) -> int:
    """Stream the reviews into a parquet file in chunks (the file holds tens of millions of lines)."""
    columns: dict[str, list] = {name: [] for name in RATINGS.names}
    written = 0
    with pq.ParquetWriter(staging, RATINGS) as writer:

        def flush() -> None:
            writer.write_table(pa.Table.from_pydict(columns, schema=RATINGS))
            for values in columns.values():
                values.clear()

        for number, line in tqdm(
            numbered_lines(path, rejects=rejects), desc=path.name, unit=" lines", mininterval=2, file=terminal()
        ):
            if not line.strip():
                continue
            try:
                user, item, rating, stamp = _review(_json_object(line))
            except RowError as error:
                rejects.add(path, number, str(error), line)
                continue
            for name, value in zip(RATINGS.names, (user, item, rating, stamp, number - 1)):
                columns[name].append(value)
            written += 1
            if len(columns["user_id"]) >= _CHUNK:
                flush()
        flush()
    return written


def k_core(ratings_parquet: Path, min_user: int, min_item: int) -> tuple[pa.Table, int]:
    """Drop users with < min_user and items with < min_item interactions until both hold.

    Returns the kept rows in file order and the number of rounds that dropped something."""
    con = duckdb.connect()
    con.execute("create table r as select * from read_parquet(?)", [str(ratings_parquet)])
    def count() -> int:
        return con.sql("select count(*) from r").fetchall()[0][0]

    rounds = 0
    while True:
        before = count()
        con.execute(
            """
            create or replace table r as
            select * from r
            where user_id in (select user_id from r group by user_id having count(*) >= ?)
              and item_id in (select item_id from r group by item_id having count(*) >= ?)
            """,
            [min_user, min_item],
        )
        if count() == before:
            break
        rounds += 1
    table = con.sql("select * from r order by file_order").to_arrow_table()
    con.close()
    return table, rounds


def _book(record: dict) -> dict:
    categories = record.get("category") or []
    if not isinstance(categories, list):
        raise RowError("category is not a list")
    brand = record.get("brand")
    return {
        "item_id": _id(record, "asin"),
        "title": (record.get("title") or "").strip() or None,
        "brand": brand.strip() if isinstance(brand, str) and brand.strip() else None,
        "categories": [str(c).strip() for c in categories if str(c).strip()],
    }


def _read_meta(path: Path, keep: set[str], rejects: Rejects) -> list[dict]:
    """Metadata of the kept items only; the first line of an item that appears twice wins."""
    items: dict[str, dict] = {}
    for number, line in tqdm(
        numbered_lines(path, rejects=rejects), desc=path.name, unit=" lines", mininterval=2, file=terminal()
    ):
        if not line.strip():
            continue
        try:
            book = _book(_json_object(line))
        except RowError as error:
            rejects.add(path, number, str(error), line)
            continue
        if book["item_id"] in keep and book["item_id"] not in items:
            items[book["item_id"]] = book
    return list(items.values())


def load_amazon_books(folder: Path, out_dir: Path, min_user: int, min_item: int) -> LoadSummary:
    rejects = Rejects()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / "reviews_unfiltered.parquet.partial"
    try:  # the staging file never outlives the load, whatever stops it
        read = _read_reviews(folder / REVIEWS_FILE, staging, rejects)
        ratings, rounds = k_core(staging, min_user, min_item)
    finally:
        staging.unlink(missing_ok=True)
    kept_items = set(ratings.column("item_id").to_pylist())
    items = _read_meta(folder / META_FILE, kept_items, rejects)
    found = {item["item_id"] for item in items}
    items += [{"item_id": item_id} for item_id in sorted(kept_items - found)]
    users = [{"user_id": user} for user in sorted(set(ratings.column("user_id").to_pylist()))]
    notes = [
        f"k-core ({min_user}/{min_item}) kept {ratings.num_rows:,} of {read:,} reviews in {rounds} rounds",
        f"{len(kept_items - found):,} items without metadata",
    ]
    return write_dataset("amazon-books-2018", out_dir, {"ratings": ratings, "items": items, "users": users}, rejects, notes)
