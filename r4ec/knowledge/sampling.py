"""Sampling with one random stream per request, for batched `model.generate`.

`generate(do_sample=True)` draws every row of a batch from torch's one global generator, so a reply depends on its
batch-mates and on how many batches ran before it, and k samples of one prompt come out the same when each is seeded
alike. Here a request's tokens are argmax(logits / T + Gumbel noise) over the top-p set (the Gumbel-max trick: an
exact draw from the softmax), with the noise from the request's own generator, seeded from (seed, sample, prompt).
Generation then runs greedily, so nothing else touches the random state.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class PerRequestSampler(LogitsProcessor):
    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: str = "cpu") -> None:
        self.generators = [torch.Generator(device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p, self.device = temperature, top_p, device

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.temperature  # [B, V]
        if self.top_p < 1.0:
            ordered, order = scores.sort(dim=-1, descending=True)
            probabilities = ordered.softmax(dim=-1)
            beyond = probabilities.cumsum(dim=-1) - probabilities >= self.top_p
            beyond[:, 0] = False  # the top token always stays, whatever top_p
            outside = torch.zeros_like(beyond).scatter(-1, order, beyond)  # back to vocabulary order
            scores = scores.masked_fill(outside, float("-inf"))
        uniform = torch.stack(
            [torch.rand(scores.shape[-1], generator=g, device=self.device) for g in self.generators]
        ).clamp_(1e-20, 1.0)  # [B, V]
        return scores - torch.log(-torch.log(uniform))
