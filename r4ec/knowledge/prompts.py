"""Prompts for user-preference and item-fact knowledge, in the three roles of R4ec (DESIGN §4).

reason  (actor)      writes the knowledge from the prompt inputs;
reflect (reflector)  judges it "reasonable" or "not reasonable" and says what to fix;
refine  (actor)      rewrites it, given its earlier answer and the feedback.

The *inference* variant is what the platform runs. The *construction* variant also shows a target (for a user, an
item they rated; for an item, a user who rated it) and asks for a prediction (will the user like the item?); it builds
SFT data (Algorithm 1 of the paper).

The three are one conversation: a shared system line, the facts and the task, the actor's answer; reflect and refine
add one user turn each after it. What they share comes first, so an engine's prefix cache (llama.cpp's server)
computes the facts once per entity rather than once per step. (The task before the facts would be shared by all
entities too, but SmolLM2 then copied the format's placeholder, "your analysis", as its answer.)

The reason and refine prompts show no answer template: the engine starts the reply with its opening tag and stops it
at the first closing tag. With a template (`<preference>your analysis</preference>`), 57 of 64 SmolLM2 reason
replies began "Your analysis is off to a great start! Here's a rewritten version..." and reviewed an answer nobody
had written; without one, none did (v2 -> v3, 64 ml-100k users, greedy). The strict retry, for engines that do not
prefill, names the tags. The construction variant asks its like / dislike prediction as a turn of its own. Refine
repeats the task ("Describe again ...") rather than asking for "an improved answer", which SmolLM2 answered with an
account of its edits ("Here is a revised version ... I made several changes") in 48 of 64 refinements; 21 with the
task.

Answers are tagged sections, parsed by `parsing.py`. Change PROMPT_VERSION whenever an inference template changes,
CONSTRUCTION_VERSION when the construction variant does: they are stored with every answer (and the prompt text is
part of the cache key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PROMPT_VERSION = "r4ec-prompts-v3"  # the inference prompts (no target shown)
CONSTRUCTION_VERSION = "r4ec-construction-v3"  # v2: the prediction as its own turn; v3: the target after the task
MAX_WORDS = 150  # an answer: about 200 tokens, inside the encoder's 256-token window (all-MiniLM-L6-v2)
REFLECTION_WORDS = 80

Entity = Literal["user", "item"]
Role = Literal["reason", "reflect", "refine"]
Chat = list[dict[str, str]]
Domain = Literal["movies", "books"]

ANSWER_TAG = {"user": "preference", "item": "knowledge"}


@dataclass(frozen=True)
class Vocabulary:
    """The nouns that differ between domains."""

    person: str
    thing: str
    things: str
    attribute: str
    brand: str | None


VOCABULARY: dict[str, Vocabulary] = {
    "movies": Vocabulary("viewer", "movie", "movies", "genre", None),
    "books": Vocabulary("reader", "book", "books", "category", "author or publisher"),
}

SYSTEM = "You are a careful recommendation analyst. You only state what the data supports, briefly."


def describe_item(row: dict, words: Vocabulary) -> str:
    """'Toy Story (1995), genre Animation' - everything the prompt may rely on is spelled out."""
    text = str(row.get("title") or f"{words.thing} {row.get('item_id')}")
    if row.get("release_year"):
        text += f" ({row['release_year']})"
    if row.get("category"):
        text += f", {words.attribute} {row['category']}"
    if words.brand and row.get("brand"):
        text += f", {words.brand} {row['brand']}"
    return text


def describe_history(history: list[dict], words: Vocabulary) -> str:
    """One line each, not indented: llama.cpp and transformers split an indent after a newline into different
    tokens, and the two engines should read the same prompt."""
    if not history:
        return "(none)"
    return "\n".join(f"{n}. {describe_item(h, words)}: {h['rating']:g} stars" for n, h in enumerate(history, 1))


def describe_user(inputs: dict, words: Vocabulary, who: str = "A") -> str:
    facts = [f"age {inputs['age']}" if inputs.get("age") else None, inputs.get("gender"), inputs.get("occupation")]
    facts = ", ".join(str(fact) for fact in facts if fact)
    person = f"{who} {words.person} ({facts})" if facts else f"{who} {words.person}"
    return f"{person} rated these {words.things}, oldest first, on a 1-5 star scale:\n{describe_history(inputs['history'], words)}"


def describe_item_inputs(inputs: dict, words: Vocabulary) -> str:
    parts = [f"The {words.thing}: {describe_item(inputs, words)}."]
    if inputs.get("genres") and len(inputs["genres"]) > 1:
        parts.append(f"All its {words.attribute}s: {', '.join(inputs['genres'])}.")
    for who in ("liker", "disliker"):
        if inputs.get(f"{who}_user_id") is None:
            continue
        verb = "liked" if who == "liker" else "disliked"
        parts.append(
            f"A {words.person} who {verb} it ({inputs[f'{who}_rating']:g} stars) had rated before:\n"
            + describe_history(inputs[f"{who}_history"], words)
        )
    return "\n".join(parts)


def _task(entity: Entity, words: Vocabulary, again: bool = False) -> str:
    describe = "Describe again" if again else "Describe"
    if entity == "user":
        return (
            f"{describe} this {words.person}'s taste: which {words.attribute}s, periods and kinds of {words.things} "
            f"they enjoy or avoid, citing the ratings that show it."
        )
    return (
        f"{describe} the facts about this {words.thing} that matter for recommending it: what kind of {words.thing} "
        f"it is, what it offers, and which {words.person}s tend to enjoy or dislike it."
    )


def _facts(entity: Entity, inputs: dict, words: Vocabulary) -> str:
    return describe_user(inputs, words) if entity == "user" else describe_item_inputs(inputs, words)


def facts(entity: Entity, domain: Domain, inputs: dict) -> str:
    """What every prompt about the entity shows: the text strategy's knowledge, with no LLM in between."""
    return _facts(entity, inputs, VOCABULARY[domain])


def _target(entity: Entity, target: dict, words: Vocabulary) -> str:
    """A user's target is an item they rated; an item's, a user who rated it (their history before that rating).
    Shown after the task, as what the answer will be checked against: placed before it, Qwen2.5-Coder-0.5B answered
    68 of 107 kept user samples with the target's title or a list of genres (median 4 words) instead of a taste."""
    if entity == "user":
        about = f"The target {words.thing}: {describe_item(target, words)}."
        use = f"whether this {words.person} will like the target {words.thing}: write about this {words.person}"
    else:
        about = describe_user(target, words, who="The target")
        use = f"whether the target {words.person} will like this {words.thing}: write about this {words.thing}"
    return f"{about}\nYour answer will be used to predict {use}, not about the target."


def _targeted(entity: Entity, words: Vocabulary) -> str:
    return f"the target {words.thing}" if entity == "user" else f"the target {words.person}"


def reason_chat(entity: Entity, domain: Domain, inputs: dict, target: dict | None = None, strict: bool = False) -> Chat:
    """The actor's first answer; with `target`, the construction variant that also predicts a like."""
    words, tag = VOCABULARY[domain], ANSWER_TAG[entity]
    lines = [_facts(entity, inputs, words), "", _task(entity, words), f"Use at most {MAX_WORDS} words."]
    if target:
        lines += ["", _target(entity, target, words)]
    if strict:
        lines.append(_insist(tag))
    return [_message("system", SYSTEM), _message("user", "\n".join(lines))]


def predict_chat(answered: Chat, entity: Entity, domain: Domain, strict: bool = False) -> Chat:
    """The construction variant's prediction, asked as its own turn after an answer (reason or refine): SmolLM2 did
    not write a second section after its answer in 38 of 40 two-section replies, and a turn of its own can be held
    to "yes" or "no" (PREDICTION_GRAMMAR on llama.cpp) while its prefix comes from the engine's cache."""
    words = VOCABULARY[domain]
    if entity == "user":
        question = f"Will this {words.person} like the target {words.thing}? Answer yes or no."
    else:
        question = f"Will the target {words.person} like this {words.thing}? Answer yes or no."
    if strict:
        question += " Write only <prediction>yes</prediction> or <prediction>no</prediction>."
    return answered + [_message("user", question)]


def _insist(tag: str) -> str:
    """The strict retry's last line: the tags, said outright."""
    return f"Write your answer between <{tag}> and </{tag}>, and nothing outside them."


def answered_chat(entity: Entity, domain: Domain, inputs: dict, answer: str, target: dict | None = None) -> Chat:
    """The reason conversation with the actor's answer as its reply."""
    tag = ANSWER_TAG[entity]
    return reason_chat(entity, domain, inputs, target) + [_message("assistant", f"<{tag}>{answer}</{tag}>")]


def _answered(
    entity: Entity, domain: Domain, inputs: dict, answer: str, target: dict | None, prediction: bool | None
) -> Chat:
    """The prefix reflect and refine share with the reason step: its conversation, and with a target the prediction
    turn after it."""
    chat = answered_chat(entity, domain, inputs, answer, target)
    if target is None:
        return chat
    return predict_chat(chat, entity, domain) + [_message("assistant", prediction_reply(prediction))]


def prediction_reply(prediction: bool | None) -> str:
    return f"<prediction>{'yes' if prediction else 'no'}</prediction>"


def reflect_chat(
    entity: Entity,
    domain: Domain,
    inputs: dict,
    answer: str,
    target: dict | None = None,
    strict: bool = False,
    prediction: bool | None = None,
) -> Chat:
    """The reflector judges the answer in the conversation that produced it: it sees the same facts and task (and,
    in the construction variant, the target and the actor's prediction for it)."""
    words = VOCABULARY[domain]
    lines = [
        "Now review that answer strictly. It is reasonable only if every claim is supported by the ratings and "
        "facts above, it is specific rather than generic, and it does not contradict them.",
        f"If it is not reasonable, say what is wrong and how to fix it, in at most {REFLECTION_WORDS} words.",
    ]
    if target:
        lines.append(f"Also check its prediction for {_targeted(entity, words)}.")
    lines += [
        "Answer in exactly this format:",
        "<judgement>reasonable or not reasonable</judgement>",
        "<reflection>what is wrong and how to fix it, or 'none'</reflection>",
    ]
    if strict:
        lines.append("Write nothing outside the tags. Start your reply with <judgement>.")
    return _answered(entity, domain, inputs, answer, target, prediction) + [_message("user", "\n".join(lines))]


def refine_chat(
    entity: Entity,
    domain: Domain,
    inputs: dict,
    answer: str,
    feedback: str,
    target: dict | None = None,
    strict: bool = False,
    prediction: bool | None = None,
) -> Chat:
    """The actor rewrites its answer, given the reviewer's feedback, in the conversation that produced it. In the
    construction variant the new prediction is asked afterwards, as its own turn (`predict_chat`)."""
    words = VOCABULARY[domain]
    lines = [
        "A reviewer judged your answer not reasonable and wrote:",
        f"<reflection>{feedback}</reflection>",
        f"{_task(entity, words, again=True)} Fix what the reviewer pointed out. Use at most {MAX_WORDS} words.",
    ]
    if strict:
        lines.append(_insist("refined"))
    return _answered(entity, domain, inputs, answer, target, prediction) + [_message("user", "\n".join(lines))]


def _message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}
