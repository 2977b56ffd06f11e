"""Algorithm 1 of the paper: SFT examples for the actor and the reflector from a teacher's construction answers.

A sample is a user's LLM history and one training-period target item with its label. The teacher
1. reasons with the target shown and predicts like / dislike (the construction variant of the reason prompt);
2. reflects on that answer, target shown: a verdict and feedback;
3. where the prediction was wrong and judged not reasonable, refines the answer with the feedback and predicts again.

    correct, judged reasonable                          -> D_reason (the answer), D_reflect (a positive)
    wrong, judged not reasonable, refinement correct    -> D_reflect (a negative, with its feedback), D_refine
    anything else                                       -> dropped, counted by the reason in DROPS

The examples are written with the *inference* prompts (no target shown): what the tuned models will be asked. The
teacher's view of the target is what makes its judgement worth learning from. With `draws` > 1 the teacher samples
that many rationales per sample (rejection sampling) and each goes through the same filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from r4ec.knowledge import prompts
from r4ec.knowledge.backends import Backend, GenerationConfig
from r4ec.knowledge.loop import VERDICT_GRAMMAR, Chain, ask
from r4ec.knowledge.parsing import parse_answer, parse_judgement, parse_prediction
from r4ec.knowledge.progress import PartProgress

SETS = ("reason", "reflect", "refine")
DROPS = {
    "no_answer": "the teacher's answer did not parse, even when asked strictly",
    "no_prediction": "the answer carried no like / dislike prediction",
    "no_verdict": "the reflection gave no verdict",
    "correct_judged_unreasonable": "a correct prediction the reflection rejected",
    "wrong_judged_reasonable": "a wrong prediction the reflection accepted",
    "refinement_unparsed": "the refinement did not parse or carried no prediction",
    "refinement_still_wrong": "the refined prediction was wrong again",
}


@dataclass(frozen=True)
class Sample:
    sample_id: str
    entity: prompts.Entity
    inputs: dict  # the entity's prompt inputs (user_prompt_inputs row)
    target: dict  # the target item: item_id, title, release_year, category, brand
    label: int  # 1: the user liked the target


@dataclass
class Construction:
    """What the teacher did for one draw of one sample, and what Algorithm 1 made of it."""

    sample: Sample
    draw: int
    chain: Chain  # replies, tokens and LLM calls, as the knowledge loop records them
    answer: str | None = None
    prediction: bool | None = None
    reasonable: bool | None = None
    feedback: str | None = None
    refined: str | None = None
    refined_prediction: bool | None = None
    sets: tuple[str, ...] = ()
    drop: str | None = None

    @property
    def correct(self) -> bool | None:
        return None if self.prediction is None else self.prediction == bool(self.sample.label)


def decide(c: Construction) -> tuple[tuple[str, ...], str | None]:
    """Algorithm 1's filter: the sets a construction feeds, or the reason it is dropped."""
    if c.answer is None:
        return (), "no_answer"
    if c.prediction is None:
        return (), "no_prediction"
    if c.reasonable is None:
        return (), "no_verdict"
    if c.correct:
        return (("reason", "reflect"), None) if c.reasonable else ((), "correct_judged_unreasonable")
    if c.reasonable:
        return (), "wrong_judged_reasonable"
    if c.refined is None or c.refined_prediction is None:
        return (), "refinement_unparsed"
    if c.refined_prediction != bool(c.sample.label):
        return (), "refinement_still_wrong"
    return ("reflect", "refine"), None


@dataclass(frozen=True)
class TeacherConfig:
    domain: prompts.Domain
    generation: GenerationConfig = GenerationConfig()
    draws: int = 1  # rationales per sample; more than one samples at `temperature`
    temperature: float = 0.8
    adapter: str | None = None

    def _with(self, opening: str, stop: str, sampled: bool = False) -> GenerationConfig:
        temperature = self.temperature if sampled and self.draws > 1 else self.generation.temperature
        return replace(self.generation, prefix=f"<{opening}>", stop=(stop,), temperature=temperature)

    def reason(self, entity: prompts.Entity) -> GenerationConfig:
        return self._with(prompts.ANSWER_TAG[entity], "</prediction>", sampled=True)

    def reflect(self) -> GenerationConfig:
        return replace(self._with("judgement", "</reflection>"), grammar=VERDICT_GRAMMAR)

    def refine(self) -> GenerationConfig:
        return self._with("refined", "</prediction>")


def _answer_and_prediction(tag: str):
    def parse(reply: str) -> tuple[str, bool] | None:
        answer, prediction = parse_answer(reply, tag), parse_prediction(reply)
        return None if answer is None or prediction is None else (answer, prediction)

    return parse


def construct(
    teacher: Backend, samples: Sequence[Sample], cfg: TeacherConfig, progress: PartProgress | None = None
) -> list[Construction]:
    """Every draw of every sample through reason -> reflect -> (refine), each step batched; one Construction each."""
    runs = [Construction(s, d, Chain(inputs=s.inputs)) for s in samples for d in range(cfg.draws)]
    by_chain = {id(c.chain): c for c in runs}
    for entity in dict.fromkeys(s.entity for s in samples):
        group = [c for c in runs if c.sample.entity == entity]
        _reason(teacher, group, entity, cfg, by_chain, progress)
        judged = [c for c in group if c.answer is not None and c.prediction is not None]
        _reflect(teacher, judged, entity, cfg, by_chain, progress)
        wrong = [c for c in judged if c.reasonable is False and not c.correct]
        _refine(teacher, wrong, entity, cfg, by_chain, progress)
    for c in runs:
        c.sets, c.drop = decide(c)
    return runs


def _reason(teacher, group, entity, cfg, by_chain, progress) -> None:
    tag = prompts.ANSWER_TAG[entity]
    for draw in range(cfg.draws):
        batch = [c for c in group if c.draw == draw]
        results = ask(
            teacher, [c.chain for c in batch], f"construct-reason-{draw + 1}",
            lambda ch, strict: prompts.reason_chat(entity, cfg.domain, ch.inputs, by_chain[id(ch)].sample.target, strict),
            _answer_and_prediction(tag), cfg.adapter, cfg.reason(entity), draw, progress,
        )  # fmt: skip
        for c, (parsed, reply) in zip(batch, results):
            c.answer, c.prediction = parsed if parsed else (parse_answer(reply, tag), parse_prediction(reply))


def _reflect(teacher, group, entity, cfg, by_chain, progress) -> None:
    def parse(reply: str):
        reasonable, feedback = parse_judgement(reply)
        return None if reasonable is None else (reasonable, feedback)

    results = ask(
        teacher, [c.chain for c in group], "construct-reflect",
        lambda ch, strict: prompts.reflect_chat(entity, cfg.domain, ch.inputs, by_chain[id(ch)].answer,
                                                by_chain[id(ch)].sample.target, strict),
        parse, cfg.adapter, cfg.reflect(), progress=progress,
    )  # fmt: skip
    for c, (parsed, _) in zip(group, results):
        c.reasonable, c.feedback = parsed if parsed else (None, None)


def _refine(teacher, group, entity, cfg, by_chain, progress) -> None:
    results = ask(
        teacher, [c.chain for c in group], "construct-refine",
        lambda ch, strict: prompts.refine_chat(entity, cfg.domain, ch.inputs, by_chain[id(ch)].answer,
                                               by_chain[id(ch)].feedback or "", by_chain[id(ch)].sample.target, strict),
        _answer_and_prediction("refined"), cfg.adapter, cfg.refine(), progress=progress,
    )  # fmt: skip
    for c, (parsed, _) in zip(group, results):
        c.refined, c.refined_prediction = parsed if parsed else (None, None)


@dataclass
class Example:
    """One chat-format SFT example: the inference prompt and the teacher's reply, with where it came from."""

    dataset: str  # reason | reflect | refine
    messages: list[dict[str, str]]
    provenance: dict = field(default_factory=dict)


def examples(c: Construction, domain: prompts.Domain, provenance: dict) -> list[Example]:
    """The examples a kept construction contributes, written with the inference prompts (no target shown)."""
    s, tag = c.sample, prompts.ANSWER_TAG[c.sample.entity]
    about = {**provenance, "sample_id": s.sample_id, "draw": c.draw, "label": s.label, "target": s.target["item_id"]}
    out = []
    if "reason" in c.sets:
        chat = prompts.reason_chat(s.entity, domain, s.inputs)
        out.append(Example("reason", chat + [_reply(f"<{tag}>{c.answer}</{tag}>")], about))
    if "reflect" in c.sets:
        verdict = "reasonable" if c.reasonable else "not reasonable"
        feedback = c.feedback or "none"
        chat = prompts.reflect_chat(s.entity, domain, s.inputs, c.answer)
        reply = f"<judgement>{verdict}</judgement>\n<reflection>{feedback}</reflection>"
        out.append(Example("reflect", chat + [_reply(reply)], {**about, "verdict": verdict}))
    if "refine" in c.sets:
        chat = prompts.refine_chat(s.entity, domain, s.inputs, c.answer, c.feedback or "")
        out.append(Example("refine", chat + [_reply(f"<refined>{c.refined}</refined>")], about))
    return out


def _reply(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}
