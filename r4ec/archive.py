"""A copy, outside the data dir, of what took long to make: knowledge parts and their vectors, every LLM answer, the
tuning data and adapters, finished training runs, the study's journal, probe results and benchmark figures
(`layout.kept`).

A machine's disk may not outlive it. `benchmarks/run_all.py --archive DIR` restores from DIR before it starts and
saves to it after every command, so the study continues on a fresh machine where the last one stopped. DIR is any
folder that outlives the machine: a mounted volume, a folder synced to a bucket, or one committed to git.

The unit is a folder (a knowledge run's parts, a training run). A folder is restored only where the data dir has none
of its files, so parts of two runs never mix; it is saved as a mirror, so a part removed by `--overwrite` leaves the
archive too. Nothing is trusted for having been archived: each step checks what it finds as it checks its own
outputs (a knowledge folder's manifest and part stamps, a training run's training-set fingerprint). The answer cache
travels as parquet segments of the answers not yet archived, added on restore to the local cache without replacing
any answer it holds.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from r4ec import fingerprint, layout
from r4ec.config import Settings
from r4ec.knowledge.cache import AnswerCache

ANSWERS = Path("cache") / "answers"  # the archive's answer segments
ANSWER_COLUMNS = ("key", "text", "tokens_in", "tokens_out")
PARTIAL = ".archiving"  # a copy cut short: never restored, removed by the next save


@dataclass
class Moved:
    """What a restore or a save did."""

    folders: int = 0  # folders restored, or saved with a change
    files: int = 0  # files copied
    removed: int = 0  # archived files that the data dir no longer has (save)
    answers: int = 0  # LLM answers added
    skipped: int = 0  # archived folders the data dir already has (restore)

    def line(self, verb: str, archive: Path) -> str:
        also = f"; {self.removed} files removed" if self.removed else ""
        here = f"; {self.skipped} folders already here, kept as they are" if self.skipped else ""
        return f"archive: {verb} {self.folders} folders ({self.files} files) and {self.answers:,} LLM answers{also}{here} ({archive})"


def kept_folders(root: Path, settings: Settings) -> dict[str, list[str]]:
    """Each finished kept folder under `root` (its path relative to it) -> its kept files (relative to the folder)."""
    found = {}
    for kind in layout.kept(settings):
        for folder in sorted(root.glob(kind.folders)):
            if folder.is_dir() and (kind.finished is None or (folder / kind.finished).is_file()):
                files = kept_files(folder, kind)
                if files:
                    found[str(folder.relative_to(root))] = files
    return found


def kept_files(folder: Path, kind: layout.Kept) -> list[str]:
    """The kept files in a folder, never a copy cut short (`adapter/*` and a run's `*` would match one)."""
    return sorted(
        {
            str(p.relative_to(folder))
            for pattern in kind.files
            for p in folder.glob(pattern)
            if p.is_file() and not p.name.endswith(PARTIAL)
        }
    )


def restore(settings: Settings, archive: Path) -> Moved:
    """Copy into the data dir every archived folder it has none of the files of, and the answers it lacks."""
    root, moved = settings.data_dir.resolve(), Moved()
    here = kept_folders(root, settings)
    for name, files in kept_folders(archive, settings).items():
        if name in here or any((root / name / f).exists() for f in files):
            moved.skipped += 1
            continue
        for file in files:
            _copy(archive / name / file, root / name / file)
        moved.folders, moved.files = moved.folders + 1, moved.files + len(files)
    moved.answers = restore_answers(settings.answer_cache_path, archive / ANSWERS)
    return moved


def save(settings: Settings, archive: Path) -> Moved:
    """Make the archive's copy of each finished kept folder of the data dir equal to it, and add the answers it
    lacks. Archived folders the data dir does not have are left alone: absent here is not deleted."""
    root, moved = settings.data_dir.resolve(), Moved()
    kinds = {name: kind for kind in layout.kept(settings) for name in _names(root, kind)}
    for name, files in kept_folders(root, settings).items():
        target = archive / name
        changed = [f for f in files if not _same(root / name / f, target / f)]
        stale = [f for f in kept_files(target, kinds[name]) if f not in files] if target.is_dir() else []
        stale += [str(p.relative_to(target)) for p in target.rglob("*" + PARTIAL)]
        for file in stale:
            (target / file).unlink()
        for file in changed:
            _copy(root / name / file, target / file)
        moved.folders += bool(changed or stale)
        moved.files, moved.removed = moved.files + len(changed), moved.removed + len(stale)
    moved.answers = save_answers(settings.answer_cache_path, archive / ANSWERS)
    return moved


def _names(root: Path, kind: layout.Kept) -> list[str]:
    return [str(folder.relative_to(root)) for folder in root.glob(kind.folders)]


def _same(source: Path, target: Path) -> bool:
    return (
        target.is_file()
        and target.stat().st_size == source.stat().st_size
        and fingerprint.of_file(target) == fingerprint.of_file(source)
    )


def _copy(source: Path, target: Path) -> None:
    """Whole or not at all: a copy cut short leaves only a `.archiving` file, which no step reads."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + PARTIAL)
    shutil.copy2(source, partial)
    partial.replace(target)


def save_answers(cache_path: Path, segments: Path) -> int:
    """Write the cached answers no segment holds yet as a new segment, named by its content."""
    if not cache_path.is_file():
        return 0
    archived = set()
    for segment in sorted(segments.glob("*.parquet")):
        archived.update(pq.read_table(segment, columns=["key"]).column("key").to_pylist())
    cache = AnswerCache(cache_path)
    try:
        rows = [row for row in cache.store.items() if row[0] not in archived]
    finally:
        cache.store.close()
    if not rows:
        return 0
    table = pa.table(dict(zip(ANSWER_COLUMNS, map(list, zip(*rows)))))
    name = fingerprint.short(fingerprint.of_json([row[0] for row in rows]))
    segments.mkdir(parents=True, exist_ok=True)
    partial = segments / f"answers-{name}.parquet{PARTIAL}"
    pq.write_table(table, partial, compression="zstd")
    partial.replace(segments / f"answers-{name}.parquet")
    return len(rows)


def restore_answers(cache_path: Path, segments: Path) -> int:
    """Add the archived answers the local cache lacks; an answer it holds stays as it is. Returns how many it lacked."""
    paths = sorted(segments.glob("*.parquet"))
    if not paths:
        return 0
    cache = AnswerCache(cache_path)
    try:
        before = len(cache)
        for path in paths:
            table = pq.read_table(path, columns=list(ANSWER_COLUMNS)).to_pylist()
            cache.store.put_many({row["key"]: tuple(row[c] for c in ANSWER_COLUMNS[1:]) for row in table}, replace=False)
        return len(cache) - before
    finally:
        cache.store.close()
