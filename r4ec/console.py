"""What a user reads from `r4ec`: r4ec's own log lines, progress, errors and summaries. Everything else (Spark's JVM
and its Python workers, Feast, dbt, warnings, C extensions writing to file descriptor 2, up to the exit-time leak
reports of duckdb's bindings) goes to a log file."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
_terminal: TextIO | None = None


def terminal() -> TextIO:
    """Where r4ec's own output goes: the terminal, also while file descriptor 2 points at the log file."""
    return _terminal or sys.stderr


def _own(record: logging.LogRecord) -> bool:
    return record.name == "r4ec" or record.name.startswith("r4ec.")


def _handler(stream: TextIO, level: int, only_own: bool = False) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    if only_own:
        handler.addFilter(_own)
    return handler


def _writes_to_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest's capture, io.StringIO
        return False


@contextlib.contextmanager
def quiet_terminal(log_path: Path, level: int = logging.INFO, keep: bool = False) -> Iterator[TextIO]:
    """Point file descriptor 2 at `log_path` (child processes such as the JVM inherit it) and log every record
    there; r4ec's records go to the terminal, the stream yielded. On leaving, file descriptor 2 is restored, except
    with `keep` and no exception: then what C extensions print at interpreter exit lands in the file as well."""
    global _terminal
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logfile = open(log_path, "a", buffering=1)  # noqa: SIM115 (closed on leaving, whatever happens)
    sys.stderr.flush()
    saved = os.dup(2)
    console = sys.stderr
    if _writes_to_fd2(sys.stderr):  # a stream of its own, on a copy of the terminal's descriptor
        console = open(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")  # noqa: SIM115
    os.dup2(logfile.fileno(), 2)
    root, handlers = logging.getLogger(), [_handler(console, level, only_own=True), _handler(logfile, logging.INFO)]
    previous = root.level
    root.setLevel(level)
    for handler in handlers:
        root.addHandler(handler)
    logging.captureWarnings(True)
    _terminal, failed = console, False
    try:
        yield console
    except BaseException:
        failed = True
        logfile.write(traceback.format_exc())
        raise
    finally:
        logging.captureWarnings(False)
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(previous)
        _terminal = None
        sys.stderr.flush()
        if failed or not keep:  # a traceback reaches the terminal
            os.dup2(saved, 2)
        os.close(saved)
        if console is not sys.stderr:
            console.close()
        logfile.close()


class LogLines(io.TextIOBase):
    """A text stream whose lines become INFO records of one logger: a library's prints, sent to the log file."""

    def __init__(self, logger: str):
        self._log = logging.getLogger(logger)
        self._tail = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._tail = (self._tail + text).split("\n")
        for line in lines:
            if line := ANSI.sub("", line).rstrip():
                self._log.info("%s", line)
        return len(text)

    def close(self) -> None:
        self.write("\n" if self._tail else "")
        super().close()


@contextlib.contextmanager
def prints_to_log(logger: str) -> Iterator[None]:
    """Send what a library prints to stdout to `logger`: stdout holds r4ec's summaries, which `eval` and pipes read."""
    lines = LogLines(logger)
    try:
        with contextlib.redirect_stdout(lines):
            yield
    finally:
        lines.close()
