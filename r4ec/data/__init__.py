"""Dataset sources: each writes ratings, items, users and rejects as raw parquet with one schema (schema.py)."""

from __future__ import annotations

from datetime import datetime

from r4ec.config import Settings
from r4ec.data.tables import DataError, LoadSummary, write_parquet


def load_dataset(settings: Settings) -> LoadSummary:
    """Read the configured dataset from its source and write its raw tables under `settings.raw_dir`; with
    `admit_until`, only the ratings before it (a static dataset replayed as arrivals)."""
    summary = _load_source(settings)
    if settings.admit_until is not None:
        admit_until(summary, settings.admit_until)
    return summary


def admit_until(summary: LoadSummary, until: datetime) -> None:
    """Keep the raw ratings rated before `until`; items and users stay whole (the catalogue is known up front)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = summary.out_dir / "ratings.parquet"
    ratings = pq.read_table(path)
    admitted = ratings.filter(pc.less(ratings["timestamp"], int(until.timestamp())))
    write_parquet(admitted, path)
    summary.counts["ratings"] = admitted.num_rows
    summary.notes.append(f"admitted {admitted.num_rows:,} of {ratings.num_rows:,} ratings, those before {until:%Y-%m-%d %H:%M:%S} UTC")


def _load_source(settings: Settings) -> LoadSummary:
    from r4ec.data import amazon, fetch, movielens

    out_dir = settings.raw_dir
    if settings.dataset == "ml-100k":
        if settings.source_path is not None:
            return movielens.load_ml100k_grouplens(settings.source_path, out_dir)
        route, folder = fetch.fetch_ml100k(settings.downloads_dir, settings.download_timeout_s)
        loader = movielens.load_ml100k_grouplens if route == "grouplens" else movielens.load_ml100k_recbole
        summary = loader(folder, out_dir)
        summary.notes.append(f"source: {route}")
        return summary
    if settings.source_path is None:
        raise DataError(f"{settings.dataset} needs its files: pass --source-path (or set R4EC_SOURCE_PATH)")
    if settings.dataset == "ml-1m":
        return movielens.load_ml1m(settings.source_path, out_dir)
    return amazon.load_amazon_books(
        settings.source_path,
        out_dir,
        settings.amazon_min_user_interactions,
        settings.amazon_min_item_interactions,
    )


__all__ = ["DataError", "LoadSummary", "load_dataset"]
