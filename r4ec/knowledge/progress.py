"""What a running knowledge part has done: step, requests, tokens, rate and ETA, every `interval_s`.

A Spark task writes it to `_progress/part-NNNNN.json` beside the parts, where the driver reads it to print one line
for the whole job (`share`: answered requests over the most the part can ask, retries aside), and logs the same
line to its own stderr, which is the Spark task log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from r4ec.knowledge.backends import Generation

log = logging.getLogger(__name__)

INTERVAL_S = 30.0
FOLDER = "_progress"


class PartProgress:
    """Counts per step (`reason`, `reflect-1`, ...): asked and answered requests, computed tokens. Entities may move
    through the steps together (batched) or each at its own pace (pipelined): the counts hold for both."""

    def __init__(
        self, part: int, entities: int, path: Path | None, steps: int = 1, interval_s: float = INTERVAL_S
    ) -> None:
        self.part, self.entities, self.path, self.steps, self.interval_s = part, entities, path, steps, interval_s
        self.asked: dict[str, int] = {}
        self.answered: dict[str, int] = {}
        self.llm_calls = self.prompt_tokens = self.generated_tokens = 0
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report_every_interval, daemon=True)

    def asking(self, step: str, requests: int) -> Callable[[Generation], None]:
        """Note `requests` more requests of `step`; the callback counts each answer."""
        with self._lock:
            self.asked[step] = self.asked.get(step, 0) + requests
            self.answered.setdefault(step, 0)
        return lambda generation: self._answered(step, generation)

    def _answered(self, step: str, generation: Generation) -> None:
        with self._lock:
            self.answered[step] += 1
            if not generation.cached:
                self.llm_calls += 1
                self.prompt_tokens += generation.prompt_tokens_computed
                self.generated_tokens += generation.tokens_out

    def snapshot(self) -> dict:
        with self._lock:
            done, asked = sum(self.answered.values()), sum(self.asked.values())
            steps = ", ".join(f"{step} {self.answered[step]}/{n}" for step, n in self.asked.items())
            return {
                "part": self.part, "entities": self.entities, "step": steps or "starting",
                "requests_done": done, "requests": asked,
                "share": min(1.0, done / (self.entities * self.steps)) if self.entities and self.steps else 1.0,
                "llm_calls": self.llm_calls, "prompt_tokens": self.prompt_tokens,
                "generated_tokens": self.generated_tokens, "seconds": round(time.perf_counter() - self.started, 1),
            }  # fmt: skip

    def line(self) -> str:
        s = self.snapshot()
        rate = s["generated_tokens"] / s["seconds"] if s["seconds"] else 0.0
        return (
            f"part {s['part']}: {s['entities']} entities, {s['step']}; {s['llm_calls']} LLM calls, "
            f"{s['prompt_tokens']:,} prompt + {s['generated_tokens']:,} generated tokens in {s['seconds']:.0f}s "
            f"({rate:.1f} generated tokens/s)"
        )

    def write(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.snapshot()))
        partial.replace(self.path)

    def _report_every_interval(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write()
            log.info("%s", self.line())

    def __enter__(self) -> PartProgress:
        self.write()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.write()  # the part's last word; the job removes the folder when it ends
