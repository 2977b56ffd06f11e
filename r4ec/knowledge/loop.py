"""The reason -> reflect -> refine loop over a batch of entities (DESIGN §4).

single     one actor pass (KAR / R2ec)
iterative  the reflector judges; only answers judged not reasonable are refined; up to N rounds (paper: N = 1)
filter     k sampled actor answers; the reflector keeps the reasonable ones; the encoder later averages the kept
           answers' vectors (when it keeps none, all k stand in, and the knowledge is flagged as a fallback)
text       no LLM: the prompt's facts are the knowledge (the control that says what an LLM adds)

Every LLM step is batched over the entities that need it. A reply that does not parse is asked once more with a
stricter instruction; if that fails too, the step is recorded in `parse_failures` and the loop goes on: a reason
answer falls back to the reply's own text, a judgement to "no verdict" (the answer is kept), a refinement to the
answer it was meant to improve. Every chain says whether its knowledge is `parsed` or a `fallback`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Literal

from r4ec.knowledge import prompts
from r4ec.knowledge.backends import Backend, GenerationConfig, Request
from r4ec.knowledge.parsing import clip_words, parse_answer, parse_judgement
from r4ec.knowledge.progress import PartProgress

Strategy = Literal["text", "single", "iterative", "filter"]
GENERIC_FEEDBACK = "Ground every claim in the ratings and facts given, and be specific."
# After the prefilled "<judgement>", an engine that takes a grammar (llama.cpp) is held to a verdict and a bounded
# reflection: SmolLM2 wrote prose instead of a verdict in 18 of 20 reflections without it, and none with it.
# An answer ends at the first closing tag, whichever: SmolLM2 often closes "<preference>" as "</pre>" and ran on to
# the token limit (64 users: replies cut 26 -> 11, generated tokens per reply 175 -> 111).
ANY_CLOSING_TAG = "</"
VERDICT_GRAMMAR = 'root ::= ("reasonable" | "not reasonable") "</judgement>\\n<reflection>" [^<]{1,600} "</reflection>"'


@dataclass(frozen=True)
class LoopConfig:
    entity: prompts.Entity
    domain: prompts.Domain
    strategy: Strategy = "iterative"
    rounds: int = 1
    samples: int = 3  # k, for the filter strategy
    actor_adapter: str | None = None
    reflector_adapter: str | None = None
    generation: GenerationConfig = GenerationConfig()
    sampling_temperature: float = 0.8  # the filter strategy's k answers
    prefill: bool = True  # start each reply with its opening tag and stop at its closing tag

    def _step(self, opening: str, stop: str = ANY_CLOSING_TAG, temperature: float | None = None) -> GenerationConfig:
        config = self.generation if temperature is None else replace(self.generation, temperature=temperature)
        return replace(config, prefix=f"<{opening}>", stop=(stop,)) if self.prefill else config

    def steps(self) -> int:
        """The LLM steps a batch goes through at most, strict retries aside."""
        return {"single": 1, "iterative": 1 + 2 * self.rounds, "filter": 2 * self.samples, "text": 0}[self.strategy]

    def reason_generation(self) -> GenerationConfig:
        tag = prompts.ANSWER_TAG[self.entity]
        return self._step(tag, temperature=self.sampling_temperature if self.strategy == "filter" else None)

    def reflect_generation(self) -> GenerationConfig:
        config = self._step("judgement", "</reflection>")
        return replace(config, grammar=VERDICT_GRAMMAR) if self.prefill else config

    def refine_generation(self) -> GenerationConfig:
        return self._step("refined")


@dataclass
class Chain:
    """Everything that happened for one entity."""

    inputs: dict
    answers: list[str] = field(default_factory=list)  # the reason answer, then each refinement
    parsed: list[bool] = field(default_factory=list)  # per answer: read from its tags (False: a raw reply stands in)
    judgements: list[str | None] = field(default_factory=list)  # per reflection: reasonable / not reasonable / None
    reflections: list[str | None] = field(default_factory=list)
    replies: list[dict] = field(default_factory=list)  # {"step", "reply"}: every raw reply, retries included
    parse_failures: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # filter: the answers judged reasonable, and only those
    filtered: bool = False  # the filter strategy ran: its knowledge is the kept answers
    refinements: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    llm_calls: int = 0  # replies generated now, not read from the cache
    generated_tokens: int = 0  # tokens_out of those
    computed_prompt_tokens: int = 0  # tokens_in of those, less what the engine's prefix cache held
    replies_cut: int = 0  # of those, replies that ran into max_new_tokens

    @property
    def knowledge(self) -> str:
        return self.kept[0] if self.kept else self.answers[-1]

    @property
    def quality(self) -> str:
        """parsed: the knowledge was read from tagged answers (and, for filter, some were judged reasonable);
        fallback: a raw reply stands in for an answer, or filter kept nothing and all k answers stand in."""
        if self.filtered:
            ok = bool(self.kept) and all(p for a, p in zip(self.answers, self.parsed) if a in self.kept)
        else:
            ok = self.parsed[-1]
        return "parsed" if ok else "fallback"


@dataclass(frozen=True)
class LLM:
    """Who the loop asks: the actor, the reflector (the same backend unless another model judges), and who is told."""

    actor: Backend
    reflector: Backend
    progress: PartProgress | None = None


def ask(
    backend: Backend,
    chains: list[Chain],
    step: str,
    build: Callable[[Chain, bool], prompts.Chat],
    parse: Callable[[str], object | None],
    adapter: str | None,
    config: GenerationConfig,
    sample: int = 0,
    progress: PartProgress | None = None,
) -> list[tuple[object | None, str]]:
    """One batched LLM step with a strict retry for replies that do not parse: [(parsed or None, last reply)]."""
    results: list[tuple[object | None, str]] = [(None, "")] * len(chains)
    pending = list(range(len(chains)))
    for strict in (False, True):
        if not pending:
            break
        requests = [Request.chat(build(chains[i], strict), adapter, sample) for i in pending]
        on_result = progress.asking(step + (" (strict)" if strict else ""), len(requests)) if progress else None
        retry = []
        for i, generation in zip(pending, backend.generate(requests, config, on_result)):
            chain = chains[i]
            chain.replies.append({"step": step + (" (strict)" if strict else ""), "reply": generation.text})
            chain.tokens_in += generation.tokens_in
            chain.tokens_out += generation.tokens_out
            if not generation.cached:
                chain.llm_calls += 1
                chain.generated_tokens += generation.tokens_out
                chain.computed_prompt_tokens += generation.prompt_tokens_computed
                chain.replies_cut += generation.tokens_out >= config.max_new_tokens
            parsed = parse(generation.text)
            results[i] = (parsed, generation.text)
            if parsed is None:
                retry.append(i)
        pending = retry
    for i in pending:
        chains[i].parse_failures.append(step)
    return results


def _reason(llm: LLM, chains: list[Chain], cfg: LoopConfig, sample: int = 0) -> list[tuple[str, bool]]:
    """[(answer, parsed?)]: a reply that never parsed stands in, clipped, as its own answer."""
    tag = prompts.ANSWER_TAG[cfg.entity]
    results = ask(
        llm.actor, chains, f"reason-{sample + 1}" if cfg.strategy == "filter" else "reason",
        lambda c, strict: prompts.reason_chat(cfg.entity, cfg.domain, c.inputs, strict=strict),
        lambda reply: parse_answer(reply, tag), cfg.actor_adapter, cfg.reason_generation(), sample, llm.progress,
    )  # fmt: skip
    return [(parsed, True) if parsed is not None else (clip_words(reply), False) for parsed, reply in results]


def _reflect(llm: LLM, chains: list[Chain], answers: list[str], cfg: LoopConfig, step: str) -> list[tuple]:
    """[(reasonable: bool | None, feedback)] for each chain's given answer."""
    by_chain = {id(c): a for c, a in zip(chains, answers)}

    def parse(reply: str):
        reasonable, feedback = parse_judgement(reply)
        return None if reasonable is None else (reasonable, feedback)

    results = ask(
        llm.reflector, chains, step,
        lambda c, strict: prompts.reflect_chat(cfg.entity, cfg.domain, c.inputs, by_chain[id(c)], strict=strict),
        parse, cfg.reflector_adapter, cfg.reflect_generation(), progress=llm.progress,
    )  # fmt: skip
    judged = []
    for chain, (parsed, _) in zip(chains, results):
        reasonable, feedback = parsed if parsed is not None else (None, None)
        chain.judgements.append(None if reasonable is None else ("reasonable" if reasonable else "not reasonable"))
        chain.reflections.append(feedback)
        judged.append((reasonable, feedback))
    return judged


def _refine(llm: LLM, chains: list[Chain], feedback: list[str | None], cfg: LoopConfig, step: str) -> None:
    notes = {id(c): f or GENERIC_FEEDBACK for c, f in zip(chains, feedback)}
    results = ask(
        llm.actor, chains, step,
        lambda c, strict: prompts.refine_chat(
            cfg.entity, cfg.domain, c.inputs, c.answers[-1], notes[id(c)], strict=strict
        ),
        lambda reply: parse_answer(reply, "refined"), cfg.actor_adapter, cfg.refine_generation(), progress=llm.progress,
    )  # fmt: skip
    for chain, (parsed, _) in zip(chains, results):
        chain.answers.append(parsed if parsed is not None else chain.answers[-1])
        chain.parsed.append(True if parsed is not None else chain.parsed[-1])
        chain.refinements += 1


def _filter(llm: LLM, chains: list[Chain], cfg: LoopConfig) -> None:
    """k sampled answers each; keep exactly those the reflector judges reasonable."""
    candidates = [_reason(llm, chains, cfg, sample) for sample in range(cfg.samples)]
    for chain, answers in zip(chains, zip(*candidates)):
        chain.filtered = True
        chain.answers.extend(answer for answer, _ in answers)
        chain.parsed.extend(parsed for _, parsed in answers)
    for sample, answers in enumerate(candidates):
        judged = _reflect(llm, chains, [answer for answer, _ in answers], cfg, f"reflect-{sample + 1}")
        for chain, (answer, _), (reasonable, _) in zip(chains, answers, judged):
            if reasonable:
                chain.kept.append(answer)


def _iterate(llm: LLM, chains: list[Chain], cfg: LoopConfig) -> None:
    """Reflect on the latest answers; refine those judged not reasonable; again on the refined, up to N rounds."""
    active = chains
    for round_ in range(1, cfg.rounds + 1):
        judged = _reflect(llm, active, [c.answers[-1] for c in active], cfg, f"reflect-{round_}")
        to_refine = [(c, feedback) for c, (reasonable, feedback) in zip(active, judged) if reasonable is False]
        if not to_refine:
            return
        active = [c for c, _ in to_refine]
        _refine(llm, active, [f for _, f in to_refine], cfg, f"refine-{round_}")


def run_loop(
    backend: Backend | None,
    inputs: list[dict],
    cfg: LoopConfig,
    reflector: Backend | None = None,
    progress: PartProgress | None = None,
    concurrency: int = 1,
) -> list[Chain]:
    """Generate knowledge for each input row with the configured strategy; one Chain per row, in order. The
    reflector is `backend` unless another model judges; `progress` is told of every step and answer. The text
    strategy asks no one (`backend` None).

    concurrency 1: the entities go through each step together, one batched call per step (transformers' static
    batches). concurrency N: N entities at a time each go through their steps at their own pace, so an engine with
    continuous batching (llama.cpp's server) always has work and never waits for a step's slowest reply."""
    llm = LLM(backend, reflector or backend, progress)
    chains = [Chain(inputs=row) for row in inputs]
    if concurrency > 1 and len(chains) > 1:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(lambda chain: _run(llm, [chain], cfg), chains))
    else:
        _run(llm, chains, cfg)
    return chains


def _run(llm: LLM, chains: list[Chain], cfg: LoopConfig) -> None:
    if not chains:
        return
    if cfg.strategy == "text":
        for chain in chains:
            chain.answers.append(prompts.facts(cfg.entity, cfg.domain, chain.inputs))
            chain.parsed.append(True)
        return
    if cfg.strategy == "filter":
        _filter(llm, chains, cfg)
        return
    for chain, (answer, parsed) in zip(chains, _reason(llm, chains, cfg)):
        chain.answers.append(answer)
        chain.parsed.append(parsed)
    if cfg.strategy == "iterative":
        _iterate(llm, chains, cfg)
