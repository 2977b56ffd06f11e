"""The reason -> reflect -> refine loop on a real (tiny, random) transformers model.

Where a test needs a particular judgement, it writes that answer into the real answer cache first, keyed exactly
as the loop will ask for it; every prompt it did not seed goes to the model. `calls` counts model generations.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pytest

from r4ec.knowledge import prompts
from r4ec.knowledge.backends import Generation, GenerationConfig, Request, TransformersBackend
from r4ec.knowledge.cache import AnswerCache, CachedBackend, answer_key
from r4ec.knowledge.loop import LoopConfig, run_loop
from r4ec.knowledge.parsing import clip_words

GEN = GenerationConfig(max_new_tokens=12)


def user(user_id: str, title: str) -> dict:
    history = [{"item_id": "1", "title": title, "release_year": 1995, "category": "Comedy", "brand": None, "rating": 5.0}]
    return {"user_id": user_id, "age": 30, "gender": "F", "occupation": "writer", "history": history}


A, B = user("a", "Clueless"), user("b", "Heat")


@pytest.fixture(scope="module")
def model(tiny_model):
    return TransformersBackend(str(tiny_model), dtype="float32", batch_size=4)


@pytest.fixture
def backend(model, tmp_path):
    return CachedBackend(model, AnswerCache(tmp_path / "answers.sqlite"))


def config(**kw) -> LoopConfig:
    return LoopConfig(entity="user", domain="movies", generation=GEN, **kw)


ITERATIVE = config(strategy="iterative")


def seed(backend, chat, reply, generation, sample=0):
    request = Request.chat(chat, None, sample)
    backend.cache.put_many({answer_key(backend.model_id, request, generation): Generation(reply, 10, 5)})


def seed_reason(backend, inputs, answer, cfg=ITERATIVE, sample=0):
    chat = prompts.reason_chat("user", "movies", inputs)
    seed(backend, chat, f"<preference>{answer}</preference>", cfg.reason_generation(), sample)


def seed_reflect(backend, inputs, answer, reasonable, feedback="none", cfg=ITERATIVE):
    verdict = "reasonable" if reasonable else "not reasonable"
    reply = f"<judgement>{verdict}</judgement><reflection>{feedback}</reflection>"
    seed(backend, prompts.reflect_chat("user", "movies", inputs, answer), reply, cfg.reflect_generation())


def seed_refine(backend, inputs, answer, feedback, refined):
    chat = prompts.refine_chat("user", "movies", inputs, answer, feedback)
    seed(backend, chat, f"<refined>{refined}</refined>", ITERATIVE.refine_generation())


def test_iterative_refines_only_what_is_judged_not_reasonable(backend):
    seed_reason(backend, A, "likes light comedies")
    seed_reason(backend, B, "likes everything")
    seed_reflect(backend, A, "likes light comedies", reasonable=True)
    seed_reflect(backend, B, "likes everything", reasonable=False, feedback="too generic; Heat is a crime film")
    seed_refine(backend, B, "likes everything", "too generic; Heat is a crime film", "likes crime thrillers")
    a, b = run_loop(backend, [A, B], config(strategy="iterative", rounds=1))
    assert backend.calls == 0  # everything the loop asked was seeded: no extra step happened
    assert (a.answers, a.judgements, a.refinements, a.knowledge) == (
        ["likes light comedies"], ["reasonable"], 0, "likes light comedies",
    )  # fmt: skip
    assert (b.answers, b.judgements, b.refinements, b.knowledge) == (
        ["likes everything", "likes crime thrillers"], ["not reasonable"], 1, "likes crime thrillers",
    )  # fmt: skip
    assert b.reflections == ["too generic; Heat is a crime film"]
    assert [r["step"] for r in b.replies] == ["reason", "reflect-1", "refine-1"]


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_rounds_stop_at_n_or_when_judged_reasonable(backend, rounds):
    seed_reason(backend, B, "v0")
    seed_reflect(backend, B, "v0", reasonable=False, feedback="f0")
    seed_refine(backend, B, "v0", "f0", "v1")
    seed_reflect(backend, B, "v1", reasonable=False, feedback="f1")
    seed_refine(backend, B, "v1", "f1", "v2")
    seed_reflect(backend, B, "v2", reasonable=True)
    (b,) = run_loop(backend, [B], config(strategy="iterative", rounds=rounds))
    assert backend.calls == 0
    assert b.answers == ["v0", "v1", "v2"][: rounds + 1]
    assert b.refinements == min(rounds, 2)
    assert b.judgements == ["not reasonable", "not reasonable", "reasonable"][:rounds]


def test_single_is_one_actor_pass(backend):
    seed_reason(backend, A, "likes light comedies")
    (a,) = run_loop(backend, [A], config(strategy="single"))
    assert (backend.calls, a.answers, a.judgements) == (0, ["likes light comedies"], [])


def test_text_is_the_prompt_facts_with_no_one_asked():
    a, b = run_loop(None, [A, B], config(strategy="text"))
    assert a.knowledge == prompts.facts("user", "movies", A) and "Clueless (1995), genre Comedy: 5 stars" in a.knowledge
    assert b.knowledge != a.knowledge and (a.quality, a.llm_calls, a.replies, a.judgements) == ("parsed", 0, [], [])


def test_filter_keeps_the_answers_judged_reasonable(backend):
    cfg = config(strategy="filter", samples=3)
    assert cfg.reason_generation().temperature == 0.8  # the k answers are sampled
    for k, answer in enumerate(["s1", "s2", "s3"]):
        seed_reason(backend, A, answer, cfg, sample=k)
        seed_reflect(backend, A, answer, reasonable=answer != "s2")
        seed_reason(backend, B, "b" + answer, cfg, sample=k)
        seed_reflect(backend, B, "b" + answer, reasonable=False)
    a, b = run_loop(backend, [A, B], cfg)
    assert backend.calls == 0
    assert a.answers == ["s1", "s2", "s3"] and a.kept == ["s1", "s3"] and a.knowledge == "s1"
    assert a.judgements == ["reasonable", "not reasonable", "reasonable"] and a.quality == "parsed"
    assert b.kept == [] and b.quality == "fallback"  # none judged reasonable: nothing is called kept


def test_filter_on_the_real_model_samples_k_different_answers_and_keeps_those_judged_reasonable(backend):
    """The k answers come from the model itself (sampled per request); the verdicts are then seeded for exactly
    those answers, so the kept set is known: samples 1 and 3 reasonable, sample 2 not."""
    cfg = config(strategy="filter", samples=3)
    (first,) = run_loop(backend, [A], cfg)
    assert len(set(first.answers)) == 3, first.answers  # defect: all k were token-identical on transformers
    assert first.kept == [] and first.quality == "fallback"  # a random reflector gives no verdict
    for k, answer in enumerate(first.answers):
        seed_reflect(backend, A, answer, reasonable=k != 1, cfg=cfg)
    calls = backend.calls
    (again,) = run_loop(backend, [A], cfg)
    assert backend.calls == calls  # the same k answers, from the cache
    assert again.answers == first.answers
    assert again.kept == [first.answers[0], first.answers[2]] and again.quality == "parsed"


def test_replies_that_do_not_parse_are_retried_then_recorded(backend):
    """Without prefilled tags the random model never writes one: each step is asked twice, then recorded."""
    a, b = run_loop(backend, [A, B], config(strategy="iterative", rounds=1, prefill=False))
    assert backend.calls == 2 * 2 * 2  # (reason + reflect) x (first + strict) x 2 users
    for chain in (a, b):
        assert chain.parse_failures == ["reason", "reflect-1"]
        assert [r["step"] for r in chain.replies] == ["reason", "reason (strict)", "reflect-1", "reflect-1 (strict)"]
        assert chain.knowledge == clip_words(chain.replies[1]["reply"])  # falls back to the reply itself
        assert chain.quality == "fallback"
        assert chain.judgements == [None] and chain.refinements == 0  # no verdict: the answer is kept
        assert chain.tokens_out > 0 and chain.tokens_in > chain.tokens_out


def test_prefilled_tags_make_even_a_random_model_parse(backend):
    """With the opening tag prefilled, the answer is whatever follows it; judgements still need a verdict."""
    (a,) = run_loop(backend, [A], ITERATIVE)
    reason = a.replies[0]["reply"]
    assert reason.startswith("<preference>") and a.answers[0] == clip_words(reason[len("<preference>") :])
    assert a.parse_failures == ["reflect-1"] and a.judgements == [None] and a.quality == "parsed"


def test_a_refinement_that_does_not_parse_keeps_the_previous_answer(backend):
    cfg = config(strategy="iterative", rounds=1, prefill=False)
    seed_reason(backend, B, "v0", cfg)
    seed_reflect(backend, B, "v0", reasonable=False, feedback="f0", cfg=cfg)
    (b,) = run_loop(backend, [B], cfg)
    assert backend.calls == 2  # the refinement, asked twice of the random model
    assert b.answers == ["v0", "v0"] and b.parse_failures == ["refine-1"] and b.refinements == 1


def test_rerun_makes_zero_llm_calls_and_gives_the_same_chains(model, tmp_path):
    first = CachedBackend(model, AnswerCache(tmp_path / "answers.sqlite"))
    chains = run_loop(first, [A, B], config(strategy="iterative"))
    assert first.calls > 0
    again = CachedBackend(model, AnswerCache(tmp_path / "answers.sqlite"))
    rerun = run_loop(again, [A, B], config(strategy="iterative"))
    assert again.calls == 0
    assert [c.answers for c in rerun] == [c.answers for c in chains]
    assert [c.replies for c in rerun] == [c.replies for c in chains]


def test_batched_generation_matches_one_by_one(model):
    """Left padding must not change greedy answers."""
    requests = [Request.chat(prompts.reason_chat("user", "movies", u)) for u in (A, B)]
    together = model.generate(requests, GEN)
    alone = [model.generate([r], GEN)[0] for r in requests]
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.tokens_in for g in together] == [g.tokens_in for g in alone]
def test_a_setting_added_later_changes_no_key_until_it_is_used():
    """Answers cached before GenerationConfig had `choices` are found after (the key of 2026-12-03's study runs)."""
    request = Request.chat([{"role": "user", "content": "hi"}])
    plain = answer_key("m", request, GenerationConfig(prefix="<a>"))
    payload = {"model": "m", "adapter": None, "messages": request.messages, "sample": 0,
               "config": {k: v for k, v in asdict(GenerationConfig(prefix="<a>")).items() if k != "choices"}}  # fmt: skip
    assert plain == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    assert answer_key("m", request, GenerationConfig(prefix="<a>", choices=("yes", "no"))) != plain
