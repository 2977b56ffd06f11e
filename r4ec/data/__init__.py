"""Dataset sources: each writes ratings, items, users and rejects as raw parquet with one schema (schema.py)."""

from __future__ import annotations

from r4ec.config import Settings
from r4ec.data.tables import DataError, LoadSummary


def load_dataset(settings: Settings) -> LoadSummary:
    """Read the configured dataset from its source and write its raw tables under `settings.raw_dir`."""
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
