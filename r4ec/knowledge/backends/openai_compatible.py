"""Chat completions over HTTP: any OpenAI-compatible endpoint (`vllm serve`, a teacher model), and llama.cpp's
server, which the knowledge job starts (r4ec.knowledge.llamacpp)."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from r4ec.knowledge.backends.base import (
    TOP_LOGPROBS,
    AdaptedModel,
    BackendError,
    Generation,
    GenerationConfig,
    OnResult,
    Request,
    choice_reply,
    cut_at_stop,
    starts_choice,
)

log = logging.getLogger(__name__)


@dataclass
class OpenAIBackend:
    """POST /chat/completions with a timeout, retries with exponential backoff and jitter, bounded concurrency.

    A request's adapter is sent as the model name, which is how `vllm serve --lora-modules` exposes adapters."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 4
    concurrency: int = 4
    backoff_s: float = 1.0
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def model_id(self) -> str:
        return f"openai:{self.base_url.rstrip('/')}:{self.model}"

    def answered_by(self, adapter: str | None) -> str:
        """The server's adapters are its own (names, not content): the request's adapter name is in its key."""
        return self.model_id

    def _client(self):
        import httpx

        if getattr(self._local, "client", None) is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._local.client = httpx.Client(base_url=self.base_url.rstrip("/"), timeout=self.timeout_s, headers=headers)
        return self._local.client

    def _body(self, request: Request, config: GenerationConfig) -> dict:
        body = {
            "model": request.adapter or self.model,
            "messages": request.as_chat(),
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "seed": config.seed + request.sample,
        }
        if config.stop:
            body["stop"] = list(config.stop)
        if config.choices:  # one token, and the candidates for it with their log-probabilities
            body.update(max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
        if config.prefix:  # vLLM's (and llama.cpp's) way to continue a started reply; disable `prefill` for others
            body["messages"].append({"role": "assistant", "content": config.prefix})
            body.update(add_generation_prompt=False, continue_final_message=True)
        return body

    def _one(self, request: Request, config: GenerationConfig) -> Generation:
        import httpx

        body = self._body(request, config)
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client().post("/chat/completions", json=body)
            except httpx.TransportError as error:
                failure = f"{type(error).__name__}: {error}"
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return self._parse(response, config)
                failure = f"HTTP {response.status_code}"
            if attempt == self.max_retries:
                raise BackendError(f"{self.base_url}: {failure} after {attempt + 1} attempts")
            delay = self.backoff_s * 2**attempt * (0.5 + random.random())
            log.warning("%s: %s; retry %d/%d in %.1fs", self.base_url, failure, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _parse(self, response, config: GenerationConfig) -> Generation:
        if response.is_error:  # a client error (bad model name, bad request): retrying will not help
            raise BackendError(f"{self.base_url}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            payload = response.json()
            usage = payload.get("usage") or {}
            text = payload["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(
                f"{self.base_url}: HTTP {response.status_code} but the body is not a chat completion: "
                f"{response.text[:200]!r}"
            ) from None
        if config.choices:
            text = choice_reply(self._choice_masses(payload, config.choices))
        elif config.prefix and not text.lstrip().startswith(config.prefix.strip()):
            text = cut_at_stop(config.prefix + text, config.stop)
        else:
            text = cut_at_stop(text, config.stop)
        reused = int((payload.get("timings") or {}).get("cache_n", 0))  # llama.cpp: prompt tokens its cache held
        return Generation(
            text.strip(), int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), tokens_reused=reused
        )

    def _choice_masses(self, payload: dict, choices: tuple[str, ...]) -> dict[str, float]:
        """Each choice's probability among the first token's top candidates (a token beyond them counts nothing)."""
        try:
            candidates = payload["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.base_url}: no log-probabilities in the reply: the server cannot score choices") from None
        masses = dict.fromkeys(choices, 0.0)
        for candidate in candidates:
            choice = starts_choice(candidate["token"], choices)
            if choice:
                masses[choice] += math.exp(candidate["logprob"])
        return masses

    def generate(
        self, requests: Sequence[Request], config: GenerationConfig, on_result: OnResult | None = None
    ) -> list[Generation]:
        def one(request: Request) -> Generation:
            generation = self._one(request, config)
            if on_result:
                on_result(generation)
            return generation

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, requests))


@dataclass
class LlamaCppBackend(AdaptedModel, OpenAIBackend):
    """llama.cpp's server: the OpenAI-compatible backend, named by the engine build and the model file's content
    (not by its port), with HF's sampling semantics: the repetition penalty over the whole context, no top-k or
    min-p cut, and the prompt cache on."""

    base_id: str = ""  # the engine build and the model file's content (llamacpp.model_identity)
    context: int = 2048  # a slot's context: the repetition penalty looks back over all of it, as transformers does
    adapters: dict[str, int] = field(default_factory=dict)  # a LoRA adapter's name -> its id on the server
    adapter_ids: dict[str, str] = field(default_factory=dict)  # a LoRA adapter's name -> its content

    def _body(self, request: Request, config: GenerationConfig) -> dict:
        body = super()._body(request, config)
        # transformers' order (penalty, temperature, top-p), and nothing else: each sampler in llama.cpp's default
        # chain walks the whole vocabulary for every token, top-p sorts it, even where greedy decoding needs neither
        samplers = ["penalties", "temperature"] + (["top_p"] if config.temperature > 0 else [])
        body.update(model=self.model, repeat_penalty=config.repetition_penalty, repeat_last_n=self.context, top_k=0,
                    min_p=0.0, samplers=samplers, cache_prompt=True)  # fmt: skip
        if config.grammar:
            body["grammar"] = config.grammar
        if request.adapter is not None and request.adapter not in self.adapters:
            raise BackendError(f"adapter {request.adapter!r} is not loaded (loaded: {sorted(self.adapters) or 'none'})")
        if self.adapters:  # every adapter's scale, said outright: the one asked for at 1, the others (the base) at 0
            body["lora"] = [{"id": n, "scale": float(name == request.adapter)} for name, n in self.adapters.items()]
        return body
