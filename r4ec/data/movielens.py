"""MovieLens readers: ml-1m (`::` files), ml-100k as GroupLens ships it (u.*) and as RecBole's wheel carries it."""

from __future__ import annotations

import re
from pathlib import Path

from r4ec.data.tables import (
    LoadSummary,
    Rejects,
    RowError,
    as_int,
    as_integer_id,
    as_rating,
    parse_delimited,
    write_dataset,
)

ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
]  # fmt: skip

# u.item's 19 genre flags, in column order (u.genre)
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip

_TITLE_YEAR = re.compile(r"^(?P<title>.*\S)\s+\((?P<year>\d{4})\)\s*$")


def split_title_year(text: str) -> tuple[str, int | None]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); a title without a year keeps year None."""
    match = _TITLE_YEAR.match(text.strip())
    if match is None:
        return text.strip(), None
    return match["title"], int(match["year"])


def _year_or_none(value: str) -> int | None:
    value = value.strip()
    return int(value) if value.isdigit() else None


def _rating_row(user: str, item: str, rating: str, timestamp: str) -> dict:
    stamp = as_int(timestamp, "timestamp")
    if stamp < 0:
        raise RowError(f"timestamp is negative: {stamp}")
    return {
        "user_id": as_integer_id(user, "user_id"),
        "item_id": as_integer_id(item, "item_id"),
        "rating": as_rating(rating),
        "timestamp": stamp,
    }


def _with_file_order(ratings: list[dict]) -> list[dict]:
    for order, row in enumerate(ratings):
        row["file_order"] = order
    return ratings


# ---- ml-1m -------------------------------------------------------------------------------------------------------


def _ml1m_movie(fields: list[str]) -> dict:
    title, year = split_title_year(fields[1])
    genres = [g for g in fields[2].strip().split("|") if g]
    if not genres:
        raise RowError("no genre")
    return {"item_id": as_integer_id(fields[0], "item_id"), "title": title, "year": year, "genres": genres}


def _ml1m_user(fields: list[str]) -> dict:
    code = as_int(fields[3], "occupation")
    if not 0 <= code < len(ML1M_OCCUPATIONS):
        raise RowError(f"unknown occupation code {code}")
    gender = fields[1].strip()
    if gender not in ("M", "F"):
        raise RowError(f"gender is not M or F: {gender!r}")
    return {
        "user_id": as_integer_id(fields[0], "user_id"),
        "gender": gender,
        "age": as_int(fields[2], "age"),
        "occupation": ML1M_OCCUPATIONS[code],
        "zip_code": fields[4].strip(),
    }


def load_ml1m(folder: Path, out_dir: Path) -> LoadSummary:
    """ratings.dat, movies.dat, users.dat: `::`-separated, latin-1, as GroupLens ships them."""
    rejects = Rejects()
    kw = {"separator": "::", "rejects": rejects, "encoding": "latin-1"}
    ratings = parse_delimited(folder / "ratings.dat", n_fields=4, parse=lambda f: _rating_row(*f), **kw)
    items = parse_delimited(folder / "movies.dat", n_fields=3, parse=_ml1m_movie, **kw)
    users = parse_delimited(folder / "users.dat", n_fields=5, parse=_ml1m_user, **kw)
    tables = {"ratings": _with_file_order(ratings), "items": items, "users": users}
    return write_dataset("ml-1m", out_dir, tables, rejects)


# ---- ml-100k ------------------------------------------------------------------------------------------------------


def _ml100k_user(fields: list[str]) -> dict:
    return {
        "user_id": as_integer_id(fields[0], "user_id"),
        "age": as_int(fields[1], "age"),
        "gender": fields[2].strip(),
        "occupation": fields[3].strip(),
        "zip_code": fields[4].strip(),
    }


def _grouplens_item(fields: list[str]) -> dict:
    flags = fields[5:]
    if any(flag not in ("0", "1") for flag in flags):
        raise RowError("genre flags are not 0/1")
    title, year = split_title_year(fields[1])
    genres = [genre for genre, flag in zip(ML100K_GENRES, flags) if flag == "1"]
    return {"item_id": as_integer_id(fields[0], "item_id"), "title": title, "year": year, "genres": genres}


def _recbole_item(fields: list[str]) -> dict:
    return {
        "item_id": as_integer_id(fields[0], "item_id"),
        "title": fields[1].strip(),
        "year": _year_or_none(fields[2]),
        "genres": fields[3].split(),
    }


def load_ml100k_grouplens(folder: Path, out_dir: Path) -> LoadSummary:
    """u.data (tab-separated), u.item and u.user (`|`-separated, latin-1) from GroupLens' ml-100k.zip."""
    rejects = Rejects()
    ratings = parse_delimited(folder / "u.data", "\t", 4, lambda f: _rating_row(*f), rejects)
    kw = {"separator": "|", "rejects": rejects, "encoding": "latin-1"}
    items = parse_delimited(folder / "u.item", n_fields=5 + len(ML100K_GENRES), parse=_grouplens_item, **kw)
    users = parse_delimited(folder / "u.user", n_fields=5, parse=_ml100k_user, **kw)
    tables = {"ratings": _with_file_order(ratings), "items": items, "users": users}
    return write_dataset("ml-100k", out_dir, tables, rejects)


def load_ml100k_recbole(folder: Path, out_dir: Path) -> LoadSummary:
    """RecBole's atomic files (ml-100k.inter/.item/.user): tab-separated with a typed header line."""
    rejects = Rejects()
    kw = {"separator": "\t", "rejects": rejects, "header": True}
    ratings = parse_delimited(folder / "ml-100k.inter", n_fields=4, parse=lambda f: _rating_row(*f), **kw)
    items = parse_delimited(folder / "ml-100k.item", n_fields=4, parse=_recbole_item, **kw)
    users = parse_delimited(folder / "ml-100k.user", n_fields=5, parse=_ml100k_user, **kw)
    tables = {"ratings": _with_file_order(ratings), "items": items, "users": users}
    return write_dataset("ml-100k", out_dir, tables, rejects)
