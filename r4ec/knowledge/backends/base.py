"""What every backend shares: the request and reply types, the `Backend` protocol, and the helpers for stop strings,
scored choices, adapters and per-request seeds."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from r4ec.local_models import adapter_identity


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    seed: int = 42
    prefix: str = ""  # the reply starts with this (e.g. an opening tag): keeps small models in the format
    stop: tuple[str, ...] = ()  # end the reply after any of these (e.g. a closing tag); kept in the text
    grammar: str | None = None  # GBNF the reply (after the prefix) must follow: llama.cpp; the others ignore it
    # score these instead of generating: the reply is the JSON of each one's share of the probability that the
    # next token after the prefix begins it, among the model's TOP_LOGPROBS most likely tokens before any sampling
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    adapter: str | None = None  # a LoRA adapter name: the actor's or the reflector's
    sample: int = 0  # which of k samples of the same prompt (the filter strategy)

    @classmethod
    def chat(cls, chat: list[dict[str, str]], adapter: str | None = None, sample: int = 0) -> Request:
        return cls(tuple((m["role"], m["content"]) for m in chat), adapter, sample)

    def as_chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass
class Generation:
    text: str
    tokens_in: int
    tokens_out: int
    cached: bool = False  # read from the answer cache: nothing was computed
    tokens_reused: int = 0  # of tokens_in, those the engine's prefix cache held: not computed again

    @property
    def prompt_tokens_computed(self) -> int:
        return self.tokens_in - self.tokens_reused


OnResult = Callable[[Generation], None]  # told of each generation as it finishes (progress)


class Backend(Protocol):
    model_id: str  # the weights and precision, with every adapter loaded (by content): recorded with the answers

    def answered_by(self, adapter: str | None) -> str:
        """Who answers a request through `adapter`: the cache's key for it."""
        ...

    def generate(
        self, requests: Sequence[Request], config: GenerationConfig, on_result: OnResult | None = None
    ) -> list[Generation]: ...


class BackendError(Exception):
    """A backend cannot run (a missing package, a model that cannot be found); one line for the user."""


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text up to and including the first stop string (a stopped batch-mate may run a few tokens past it)."""
    ends = [text.find(s) + len(s) for s in stop if s in text]
    return text[: min(ends)] if ends else text


TOP_LOGPROBS = 20  # the next-token candidates a choice is looked for among (OpenAI's API returns at most 20)


def starts_choice(token: str, choices: Sequence[str]) -> str | None:
    """The one choice a next token begins (case and surrounding spaces aside: "Yes", " yes" begin "yes"); None if it
    begins none or several."""
    start = token.strip().lower()
    begun = [c for c in choices if start and c.lower().startswith(start)]
    return begun[0] if len(begun) == 1 else None


def choice_reply(masses: dict[str, float]) -> str:
    """`{"yes": 0.7, "no": 0.3}`: each choice's share of the probability the choices got (null if they got none)."""
    total = sum(masses.values())
    return json.dumps({c: (round(m / total, 6) if total > 0 else None) for c, m in masses.items()})


def parse_choice_reply(text: str, choice: str) -> float | None:
    """The probability of `choice` in a `choice_reply`, or None (no choice had any probability, or not such a reply)."""
    try:
        value = json.loads(text).get(choice)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def adapter_ids(adapters: dict[str, Path]) -> dict[str, str]:
    """Each adapter's name -> `name@sha256:...`: by content, so a retrained one is never taken for the old."""
    return {name: adapter_identity(Path(path)) for name, path in sorted(adapters.items())}


def with_adapters(base_id: str, ids: dict[str, str]) -> str:
    """`base:actor=name@sha256:...,reflector=...`."""
    named = ",".join(f"{name}={identity}" for name, identity in sorted(ids.items()))
    return f"{base_id}:{named}" if named else base_id


class AdaptedModel:
    """The identity of a local base model (`base_id`) serving LoRA adapters (`adapter_ids`, by content).

    A request is answered by the base and its own adapter only: a base request on a model holding adapters answers
    as on one holding none (peft's `disable_adapter`, llama.cpp's scale 0), so the two share cached answers, and an
    actor's answers stay valid when the reflector's adapter is retrained."""

    base_id: str
    adapter_ids: dict[str, str]

    @property
    def model_id(self) -> str:
        return with_adapters(self.base_id, self.adapter_ids)

    def answered_by(self, adapter: str | None) -> str:
        return with_adapters(self.base_id, {adapter: self.adapter_ids[adapter]} if adapter in self.adapter_ids else {})


def request_seed(seed: int, sample: int, prompt: str) -> int:
    """A request's own seed: the same prompt and sample index always draw alike, another sample index differently."""
    digest = hashlib.sha256(f"{seed}\0{sample}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
