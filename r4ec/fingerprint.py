"""Content hashes: what a step's output was built from, so that a re-run can tell "unchanged" from "changed".

Reuse is decided by these, never by file names or modification times. A file's hash is remembered per process by
(path, size, mtime): the same bytes are not read twice in one run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_FILES: dict[tuple[str, int, int], str] = {}


def short(digest: str) -> str:
    """The first 12 hex digits: enough to tell runs apart in a name or a table."""
    return digest.removeprefix("sha256:")[:12]


def of_json(value: object) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys; dates and paths as strings)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def of_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        _FILES[key] = "sha256:" + digest.hexdigest()
    return _FILES[key]


def of_folder(path: Path) -> str:
    """Every file under `path` by relative name and content (hidden files and caches left out)."""
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and not any(part.startswith((".", "__")) for part in p.relative_to(path).parts)
    )
    return of_json([[str(p.relative_to(path)), of_file(p)] for p in files])


def of_path(path: Path) -> str:
    return of_folder(path) if path.is_dir() else of_file(path)


def read_stamp(path: Path, key: bytes) -> str | None:
    """The stamp a parquet file carries under `key` in its metadata (what it was built from); None for a file that is
    missing, damaged or unstamped: such a file is rebuilt, never trusted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        value = (pq.read_schema(path).metadata or {}).get(key)
    except (OSError, pa.ArrowInvalid):
        return None
    return value.decode() if value else None


def of_rows(rows: list[dict]) -> str:
    """The rows' content, whatever the file layout or row-group sizes that hold them."""
    return of_json(rows)
