"""Algorithm 1 of the paper: SFT examples for the actor and the reflector from a teacher's construction answers.

A sample is an entity's prompt inputs and one training-period rating with its label: for a user, the item they
rated is the target; for an item, the user who rated it (with their history before that rating). The teacher
1. reasons with the target shown (the construction variant of the reason prompt), then predicts like / dislike in
   a turn of its own (a small model does not reliably write a second section after its answer);
2. reflects on that answer and prediction, target shown: a verdict and feedback;
3. where the prediction was wrong and judged not reasonable, refines the answer with the feedback and predicts again.
Every first prediction is also scored: P(yes), the teacher's probability of "yes" as its first word, so the card can
say how well the teacher ranks likes (an AUC) and not only how often it is right. With `like_threshold` the teacher
predicts by that probability (P(yes) >= threshold, the refined prediction too) rather than by its reply: the local
teachers answer "yes" almost always (the 1.5B teacher: 95 of 96), which leaves Algorithm 1 only "like" rationales.

    correct, judged reasonable                          -> D_reason (the answer), D_reflect (a positive)
    wrong, judged not reasonable, refinement correct    -> D_reflect (a negative, with its feedback), D_refine
    anything else                                       -> dropped, counted by the reason in DROPS

An answer or refinement shorter than `min_words` is dropped before it is judged (and costs no further calls): the
actor learns to write what D_reason holds, and Qwen2.5-Coder-0.5B as teacher answered most users with a title or a
list of genres; an actor tuned on those wrote "The" and stopped.

The examples are written with the *inference* prompts (no target shown): what the tuned models will be asked. The
teacher's view of the target is what makes its judgement worth learning from. With `draws` > 1 the teacher samples
that many rationales per sample (rejection sampling) and each goes through the same filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from r4ec.knowledge import prompts
from r4ec.knowledge.backends import Backend, GenerationConfig, parse_choice_reply
from r4ec.knowledge.loop import ANY_CLOSING_TAG, VERDICT_GRAMMAR, Chain, ask
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
    "answer_too_short": "the answer had fewer words than tuning.min_answer_words (a title, a list of genres)",
    "refinement_too_short": "the refinement had fewer words than tuning.min_answer_words",
}


@dataclass(frozen=True)
class Sample:
    sample_id: str
    entity: prompts.Entity
    inputs: dict  # the entity's prompt inputs (a user_prompt_inputs or item_prompt_inputs row)
    target: dict  # a user's target item (item_id, title, ...), an item's target user (user_id, age, ..., history)
    label: int  # 1: the user liked the item

    @property
    def target_id(self) -> str:
        return self.target["item_id"] if self.entity == "user" else self.target["user_id"]


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
    p_like: float | None = None  # the probability the actor's first prediction is "yes"
    p_reasonable: float | None = None  # evaluation: the probability the reflector's verdict is "reasonable"
    sets: tuple[str, ...] = ()
    drop: str | None = None

    @property
    def correct(self) -> bool | None:
        return None if self.prediction is None else self.prediction == bool(self.sample.label)


def decide(c: Construction, min_words: int = 0) -> tuple[tuple[str, ...], str | None]:
    """Algorithm 1's filter: the sets a construction feeds, or the reason it is dropped."""
    if c.answer is None:
        return (), "no_answer"
    if not substantive(c.answer, min_words):
        return (), "answer_too_short"
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
    if not substantive(c.refined, min_words):
        return (), "refinement_too_short"
    if c.refined_prediction != bool(c.sample.label):
        return (), "refinement_still_wrong"
    return ("reflect", "refine"), None


def substantive(text: str, min_words: int) -> bool:
    return len(text.split()) >= min_words


# The prediction turn's reply after its prefilled "<prediction>": held to a verdict where the engine takes a grammar.
PREDICTION_GRAMMAR = 'root ::= ("yes" | "no") "</prediction>"'


@dataclass(frozen=True)
class TeacherConfig:
    domain: prompts.Domain
    generation: GenerationConfig = GenerationConfig()
    draws: int = 1  # rationales per sample; more than one samples at `temperature`
    temperature: float = 0.8
    adapter: str | None = None  # the actor's (reason, predict, refine)
    reflector_adapter: str | None = None
    min_words: int = 0  # shorter answers are dropped unjudged (construction only)
    like_threshold: float | None = None  # predict by P(yes) >= this rather than by the reply (None)
    # evaluation: the reflector gets the inference prompt (no target), as a tuned one was trained, and every answer
    # it rejects is refined, right or wrong, as at inference
    evaluation: bool = False

    def _with(self, opening: str, stop: str, sampled: bool = False) -> GenerationConfig:
        temperature = self.temperature if sampled and self.draws > 1 else self.generation.temperature
        return replace(self.generation, prefix=f"<{opening}>", stop=(stop,), temperature=temperature)

    def steps(self) -> int:
        """LLM steps a sample goes through at most (strict retries aside): reason, predict, score the prediction
        (unless predicting by score), reflect, refine, predict; an evaluation also scores the verdict."""
        return (5 + (self.like_threshold is None) + self.evaluation) * self.draws

    def reason(self, entity: prompts.Entity) -> GenerationConfig:
        return self._with(prompts.ANSWER_TAG[entity], ANY_CLOSING_TAG, sampled=True)

    def predict(self) -> GenerationConfig:
        config = self._with("prediction", "</prediction>")
        return replace(config, grammar=PREDICTION_GRAMMAR, max_new_tokens=min(8, config.max_new_tokens))

    def reflect(self) -> GenerationConfig:
        return replace(self._with("judgement", "</reflection>"), grammar=VERDICT_GRAMMAR)

    def refine(self) -> GenerationConfig:
        return self._with("refined", ANY_CLOSING_TAG)

    def scored(self, config: GenerationConfig, choices: tuple[str, str]) -> GenerationConfig:
        """A step's reply scored rather than generated: the probability of each choice as its first word."""
        return replace(config, choices=choices, grammar=None, stop=(), temperature=0.0)

    def scored_prediction(self) -> GenerationConfig:
        return self.scored(self.predict(), ("yes", "no"))


def construct(
    teacher: Backend,
    samples: Sequence[Sample],
    cfg: TeacherConfig,
    progress: PartProgress | None = None,
    concurrency: int = 1,
    reflector: Backend | None = None,
) -> list[Construction]:
    """Every draw of every sample through reason -> predict -> reflect -> (refine -> predict); one Construction each.
    The teacher plays both parts (a tuned pair: through its adapters, `cfg.adapter` and `cfg.reflector_adapter`),
    unless another model judges (`reflector`: the reflector's size, the paper's Fig. 3).

    concurrency 1: each step batched over all samples (transformers' static batches); N: N samples at a time, each
    at its own pace, so a continuously batching server (llama.cpp) never waits for a step's slowest reply."""
    if concurrency > 1 and len(samples) > 1:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            done = pool.map(lambda sample: _construct(teacher, [sample], cfg, progress, reflector), samples)
            return [c for constructions in done for c in constructions]
    return _construct(teacher, samples, cfg, progress, reflector)


def _construct(teacher: Backend, samples: Sequence[Sample], cfg: TeacherConfig, progress,
               reflector: Backend | None = None) -> list[Construction]:  # fmt: skip
    judge = reflector or teacher
    runs = [Construction(s, d, Chain(inputs=s.inputs)) for s in samples for d in range(cfg.draws)]
    gate = 0 if cfg.evaluation else cfg.min_words  # an evaluation measures whatever the actor writes
    for entity in dict.fromkeys(s.entity for s in samples):
        group = [c for c in runs if c.sample.entity == entity]
        _reason(teacher, group, entity, cfg, progress)
        answered = [c for c in group if c.answer is not None and substantive(c.answer, gate)]
        _predict(teacher, answered, entity, cfg, progress, refined=False)
        _score_prediction(teacher, [c for c in answered if c.p_like is None], entity, cfg, progress)
        judged = [c for c in answered if c.prediction is not None]
        _reflect(judge, judged, entity, cfg, progress)
        if cfg.evaluation:
            _score_verdict(judge, judged, entity, cfg, progress)
        rejected = [c for c in judged if c.reasonable is False and (cfg.evaluation or not c.correct)]
        _refine(teacher, rejected, entity, cfg, progress)
        _predict(teacher, [c for c in rejected if c.refined is not None], entity, cfg, progress, refined=True)
    for c in runs:
        c.sets, c.drop = decide(c, gate)
    return runs


def _step(teacher, group: list[Construction], step: str, build, parse, adapter, config, draw=0, progress=None) -> list:
    """One batched teacher step over constructions (`build(construction, strict)` makes the chat): parsed or None."""
    by_chain = {id(c.chain): c for c in group}
    results = ask(teacher, [c.chain for c in group], step, lambda ch, strict: build(by_chain[id(ch)], strict),
                  parse, adapter, config, draw, progress)  # fmt: skip
    return [parsed for parsed, _ in results]


def _reason(teacher, group, entity, cfg, progress) -> None:
    tag = prompts.ANSWER_TAG[entity]
    for draw in range(cfg.draws):
        batch = [c for c in group if c.draw == draw]
        answers = _step(
            teacher, batch, f"construct-reason-{draw + 1}",
            lambda c, strict: prompts.reason_chat(entity, cfg.domain, c.sample.inputs, c.sample.target, strict),
            lambda reply: parse_answer(reply, tag), cfg.adapter, cfg.reason(entity), draw, progress,
        )  # fmt: skip
        for c, answer in zip(batch, answers):
            c.answer = answer


def _predict(teacher, group, entity, cfg, progress, refined: bool) -> None:
    """The like / dislike prediction after the answer (or the refinement), asked as its own turn: the reply, or
    P(yes) against `like_threshold`."""

    def build(c: Construction, strict: bool) -> prompts.Chat:
        s = c.sample
        if refined:
            chat = prompts.refine_chat(entity, cfg.domain, s.inputs, c.answer, c.feedback or "", s.target,
                                       prediction=c.prediction) + [_reply(f"<refined>{c.refined}</refined>")]  # fmt: skip
        else:
            chat = prompts.answered_chat(entity, cfg.domain, s.inputs, c.answer, s.target)
        return prompts.predict_chat(chat, entity, cfg.domain, strict)

    step = "construct-predict-refined" if refined else "construct-predict"
    threshold = cfg.like_threshold
    parse, config = (parse_prediction, cfg.predict()) if threshold is None else (_p_yes, cfg.scored_prediction())
    for c, said in zip(group, _step(teacher, group, step, build, parse, cfg.adapter, config, progress=progress)):
        prediction = said if threshold is None or said is None else said >= threshold
        if refined:
            c.refined_prediction = prediction
        else:
            c.prediction, c.p_like = prediction, (c.p_like if threshold is None else said)


def _p_yes(reply: str) -> float | None:
    return parse_choice_reply(reply, "yes")


def _reflect(teacher, group, entity, cfg, progress) -> None:
    def parse(reply: str):
        reasonable, feedback = parse_judgement(reply)
        return None if reasonable is None else (reasonable, feedback)

    judged = _step(
        teacher, group, "construct-reflect",
        lambda c, strict: (
            prompts.reflect_chat(entity, cfg.domain, c.sample.inputs, c.answer, c.sample.target, strict, c.prediction)
            if not cfg.evaluation else prompts.reflect_chat(entity, cfg.domain, c.sample.inputs, c.answer,
                                                                   strict=strict)
        ),
        parse, cfg.reflector_adapter, cfg.reflect(), progress=progress,
    )  # fmt: skip
    for c, parsed in zip(group, judged):
        c.reasonable, c.feedback = parsed if parsed else (None, None)


def _score_prediction(teacher, group, entity, cfg, progress) -> None:
    """The first prediction as a probability, read from the model's next-token distribution, so that it can be
    ranked (an AUC) rather than only counted."""
    predicted = _step(
        teacher, group, "score-prediction",
        lambda c, strict: prompts.predict_chat(prompts.answered_chat(entity, cfg.domain, c.sample.inputs, c.answer,
                                                                     c.sample.target), entity, cfg.domain, strict),
        _p_yes, cfg.adapter, cfg.scored_prediction(), progress=progress,
    )  # fmt: skip
    for c, p_like in zip(group, predicted):
        c.p_like = p_like


def _score_verdict(judge, group, entity, cfg, progress) -> None:
    """Evaluation: the verdict as a probability, as the prediction's."""
    verdicts = _step(
        judge, group, "score-verdict",
        lambda c, strict: prompts.reflect_chat(entity, cfg.domain, c.sample.inputs, c.answer, strict=strict),
        lambda reply: parse_choice_reply(reply, "reasonable"), cfg.reflector_adapter,
        cfg.scored(cfg.reflect(), ("reasonable", "not reasonable")), progress=progress,
    )  # fmt: skip
    for c, p_reasonable in zip(group, verdicts):
        c.p_reasonable = p_reasonable


def _refine(teacher, group, entity, cfg, progress) -> None:
    refined = _step(
        teacher, group, "construct-refine",
        lambda c, strict: prompts.refine_chat(entity, cfg.domain, c.sample.inputs, c.answer, c.feedback or "",
                                              c.sample.target, strict, c.prediction),
        lambda reply: parse_answer(reply, "refined"), cfg.adapter, cfg.refine(), progress=progress,
    )  # fmt: skip
    for c, answer in zip(group, refined):
        c.refined = answer


@dataclass
class Example:
    """One chat-format SFT example: the inference prompt and the teacher's reply, with where it came from."""

    dataset: str  # reason | reflect | refine
    messages: list[dict[str, str]]
    provenance: dict = field(default_factory=dict)


def examples(c: Construction, domain: prompts.Domain, provenance: dict) -> list[Example]:
    """The examples a kept construction contributes, written with the inference prompts (no target shown)."""
    s, tag = c.sample, prompts.ANSWER_TAG[c.sample.entity]
    about = {**provenance, "sample_id": s.sample_id, "draw": c.draw, "label": s.label, "target": s.target_id}
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
