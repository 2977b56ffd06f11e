"""What every dataset source shares: reading text files line by line with rejects, and writing raw parquet."""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from r4ec.data.schema import REJECTS, TABLES
from r4ec.files import written_atomically


class DataError(Exception):
    """Bad input the user can fix (a missing file, an unreadable archive); the CLI prints it as one line."""


class RowError(ValueError):
    """One malformed line; its message is the reason written to the rejects file."""


@dataclass
class Rejects:
    """Malformed lines, counted and kept with file, line number and reason, never silently dropped."""

    rows: list[dict] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)  # files that stop early, for the load's summary line

    def add(self, file: Path, line_number: int, reason: str, line: str) -> None:
        self.rows.append({"file": file.name, "line_number": line_number, "reason": reason, "line": line[:1000]})

    def damaged(self, file: Path, line_number: int, offset: int, error: Exception, line: str) -> None:
        """A file whose compressed stream breaks off: one reject at the line it broke in, and a note."""
        where = f"line {line_number:,} (uncompressed byte {offset:,})"
        self.add(file, line_number, f"damaged gzip: {error}; the file is unread from {where} on", line)
        self.damage.append(f"{file.name} is damaged at {where}: {line_number - 1:,} lines before it were read")

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


_CHUNK_BYTES = 1 << 20


def numbered_lines(path: Path, encoding: str = "utf-8", rejects: Rejects | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline); gzip is read transparently; lines end at a newline byte.

    Read in binary chunks, so that where a gzip stream breaks off (truncated, corrupt) every whole line before
    the damage is still yielded; with `rejects`, the damage becomes a reject with its line number and byte offset
    and reading stops there, otherwise it is a DataError. A line that does not decode is a reject too. A file that
    yields no byte at all (not gzip, say) is a DataError either way."""
    require_file(path)
    number, offset, pending = 0, 0, b""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
            while True:
                try:
                    chunk = handle.read1(_CHUNK_BYTES)
                except (EOFError, zlib.error, gzip.BadGzipFile) as error:
                    if rejects is None or (number == 0 and not pending):
                        raise DataError(f"{path}: cannot be read ({error})") from error
                    rejects.damaged(path, number + 1, offset, error, pending.decode(encoding, errors="replace"))
                    return
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    number += 1
                    line = _decoded(path, number, offset, raw.removesuffix(b"\r"), encoding, rejects)
                    offset += len(raw) + 1
                    if line is not None:
                        yield number, line
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error})") from error
    if pending:
        line = _decoded(path, number + 1, offset, pending.removesuffix(b"\r"), encoding, rejects)
        if line is not None:
            yield number + 1, line


def _decoded(path: Path, number: int, offset: int, raw: bytes, encoding: str, rejects: Rejects | None) -> str | None:
    """The line as text, or None where it does not decode (a reject naming the byte: one bad line, not a bad file)."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        if rejects is None:
            raise DataError(f"{path}: line {number:,} is not {encoding} ({error.reason})") from None
        rejects.add(path, number, f"not {encoding}: {error.reason} at byte {offset + error.start:,}",
                    raw.decode(encoding, errors="replace"))  # fmt: skip
        return None


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
    for number, line in numbered_lines(path, encoding, rejects):
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


_INTEGER = re.compile(r"[0-9]+")


def as_id(value: str, what: str) -> str:
    """A printable id without spaces (Amazon's reviewerID / asin), taken as it is: an id holding a control character
    or a space is a damaged line, not an id (str.strip would even remove \\x1c-\\x1f and pass what is left)."""
    if not value:
        raise RowError(f"{what} is empty")
    if not value.isprintable() or " " in value:
        raise RowError(f"{what} is not printable text without spaces: {value!r}")
    return value


def as_integer_id(value: str, what: str) -> str:
    """A MovieLens id: ASCII digits only, spaces and tabs around them allowed (int() would also take '+7', '1_0',
    Arabic-Indic digits, and strip control characters); kept as text."""
    value = value.strip(" \t")
    if not value:
        raise RowError(f"{what} is empty")
    if not _INTEGER.fullmatch(value):
        raise RowError(f"{what} is not an integer: {value!r}")
    return value


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write to a temporary name and rename, so a crash never leaves a half-written table behind."""
    with written_atomically(path) as partial:
        pq.write_table(table, partial)


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
    return LoadSummary(dataset, out_dir, counts, rejects.by_reason(), [*rejects.damage, *(notes or [])])
