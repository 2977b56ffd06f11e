"""What every dataset source shares: reading text files line by line with rejects, and writing raw parquet."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from r4ec.data.schema import REJECTS, TABLES


class DataError(Exception):
    """Bad input the user can fix (a missing file, an unreadable archive); the CLI prints it as one line."""


class RowError(ValueError):
    """One malformed line; its message is the reason written to the rejects file."""


@dataclass
class Rejects:
    """Malformed lines, counted and kept with file, line number and reason, never silently dropped."""

    rows: list[dict] = field(default_factory=list)

    def add(self, file: Path, line_number: int, reason: str, line: str) -> None:
        self.rows.append({"file": file.name, "line_number": line_number, "reason": reason, "line": line[:1000]})

    def __len__(self) -> int:
        return len(self.rows)

    def by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row["reason"]] = counts.get(row["reason"], 0) + 1
        return counts


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: file is not readable")
    return path


def numbered_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline); gzip is read transparently."""
    require_file(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding=encoding, errors="strict", newline="") as handle:
            for number, line in enumerate(handle, start=1):
                yield number, line.rstrip("\r\n")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read ({error})") from error


def parse_delimited(
    path: Path,
    separator: str,
    n_fields: int,
    parse: Callable[[list[str]], dict],
    rejects: Rejects,
    encoding: str = "utf-8",
    header: bool = False,
) -> list[dict]:
    """Split each line into exactly `n_fields` fields and turn it into a row; bad lines go to `rejects`."""
    rows = []
    for number, line in numbered_lines(path, encoding):
        if (header and number == 1) or not line.strip():
            continue
        fields = line.split(separator)
        if len(fields) != n_fields:
            rejects.add(path, number, f"expected {n_fields} fields, found {len(fields)}", line)
            continue
        try:
            rows.append(parse(fields))
        except RowError as error:
            rejects.add(path, number, str(error), line)
    return rows


def as_int(value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise RowError(f"{what} is not an integer: {value!r}") from None


def as_rating(value: str, low: float = 1.0, high: float = 5.0) -> float:
    try:
        rating = float(value.strip())
    except ValueError:
        raise RowError(f"rating is not a number: {value!r}") from None
    if not low <= rating <= high:
        raise RowError(f"rating {rating} outside [{low:g}, {high:g}]")
    return rating


def as_id(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise RowError(f"{what} is empty")
    return value


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write to a temporary name and rename, so a crash never leaves a half-written table behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial)
    os.replace(partial, path)


@dataclass
class LoadSummary:
    dataset: str
    out_dir: Path
    counts: dict[str, int]
    rejects: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        counts = ", ".join(f"{n:,} {name}" for name, n in self.counts.items())
        rejected = sum(self.rejects.values())
        reasons = "; ".join(f"{n:,} {reason}" for reason, n in sorted(self.rejects.items(), key=lambda kv: -kv[1])[:3])
        tail = f" ({reasons}; see rejects.parquet)" if rejected else ""
        notes = "".join(f"; {note}" for note in self.notes)
        return f"{self.dataset}: {counts} written to {self.out_dir}; {rejected:,} lines rejected{tail}{notes}"


def write_dataset(
    dataset: str,
    out_dir: Path,
    tables: dict[str, list[dict] | pa.Table],
    rejects: Rejects,
    notes: list[str] | None = None,
) -> LoadSummary:
    """Write ratings, items, users (rows or arrow tables) and the rejects as parquet with the shared raw schema."""
    counts = {}
    for name, schema in TABLES.items():
        table = tables[name]
        table = table.cast(schema) if isinstance(table, pa.Table) else pa.Table.from_pylist(table, schema=schema)
        write_parquet(table, out_dir / f"{name}.parquet")
        counts[name] = table.num_rows
    write_parquet(pa.Table.from_pylist(rejects.rows, schema=REJECTS), out_dir / "rejects.parquet")
    return LoadSummary(dataset, out_dir, counts, rejects.by_reason(), notes or [])
