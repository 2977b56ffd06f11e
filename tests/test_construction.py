"""Algorithm 1 on the real code path: the tiny transformers model behind the real answer cache, with the teacher's
replies written into the cache first, so that each branch (kept for which sets, dropped for which reason) is driven
by a reply it would parse."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from r4ec.knowledge import prompts
from r4ec.knowledge.backends import Generation, GenerationConfig, Request, TransformersBackend
from r4ec.knowledge.cache import AnswerCache, CachedBackend, answer_key
from r4ec.knowledge.loop import Chain
from r4ec.tuning.construction import DROPS, Construction, Sample, TeacherConfig, construct, decide, examples

HISTORY = [{"item_id": "1", "title": "Toy Story", "release_year": 1995, "category": "Animation", "brand": None, "rating": 5.0}]
INPUTS = {"user_id": "7", "age": 30, "gender": "F", "occupation": "writer", "history": HISTORY}
TARGET = {"item_id": "50", "title": "Star Wars", "release_year": 1977, "category": "Action", "brand": None}
CFG = TeacherConfig(domain="movies", generation=GenerationConfig(max_new_tokens=8))


@pytest.fixture(scope="module")
def model(tiny_model):
    return TransformersBackend(str(tiny_model), dtype="float32", batch_size=4)


@pytest.fixture
def teacher(model, tmp_path):
    return CachedBackend(model, AnswerCache(tmp_path / "answers.sqlite"))


def sample(label: int, user: str = "7") -> Sample:
    """Users differ in age: the prompt shows no id, and equal prompts would share their cached replies."""
    return Sample(f"u{user}", "user", {**INPUTS, "user_id": user, "age": 20 + int(user)}, TARGET, label)


def seed(teacher, chat, reply, generation, draw=0):
    key = answer_key(teacher.model_id, Request.chat(chat, None, draw), generation)
    teacher.cache.put_many({key: Generation(reply, 10, 5)})


def seed_prediction(teacher, chat, predicts: str, p_yes: float | None, cfg: TeacherConfig) -> None:
    """A prediction turn's replies: generated (`predicts`) and scored (P(yes); by default on the side it predicts)."""
    p_yes = (0.9 if predicts == "yes" else 0.2) if p_yes is None else p_yes
    predict = prompts.predict_chat(chat, "user", "movies")
    seed(teacher, predict, f"<prediction>{predicts}</prediction>", cfg.predict())
    seed(teacher, predict, json.dumps({"yes": p_yes, "no": round(1 - p_yes, 6)}), cfg.scored_prediction())


def seed_chain(teacher, s: Sample, predicts: str, verdict: str | None, refined: str | None = None, draw=0,
               cfg: TeacherConfig = CFG, p_yes: float | None = None, refined_p_yes: float | None = None):  # fmt: skip
    """The teacher's replies for one sample: its answer, its prediction, its verdict, its refinement and the
    refinement's prediction, each at the conversation it answers (`predicts`: the prediction the construction
    makes, by reply or by P(yes))."""
    answer, said = f"likes {s.inputs['user_id']} cartoons draw {draw}", predicts == "yes"
    seed(teacher, prompts.reason_chat("user", "movies", s.inputs, TARGET), f"<preference>{answer}</preference>",
         cfg.reason("user"), draw)  # fmt: skip
    seed_prediction(teacher, prompts.answered_chat("user", "movies", s.inputs, answer, TARGET), predicts, p_yes, cfg)
    if verdict is not None:
        reflect = prompts.reflect_chat("user", "movies", s.inputs, answer, TARGET, prediction=said)
        seed(teacher, reflect, f"<judgement>{verdict}</judgement><reflection>cite the ratings</reflection>", cfg.reflect())
    if refined is not None:
        refine = prompts.refine_chat("user", "movies", s.inputs, answer, "cite the ratings", TARGET, prediction=said)
        seed(teacher, refine, "<refined>rated Toy Story 5</refined>", cfg.refine())
        after = refine + [{"role": "assistant", "content": "<refined>rated Toy Story 5</refined>"}]
        seed_prediction(teacher, after, refined, refined_p_yes, cfg)
    return answer


def test_the_filter_keeps_and_drops_exactly_as_algorithm_1_says():
    def outcome(prediction, label, reasonable, refined=None, answer="a"):
        c = Construction(sample(label), 0, Chain(inputs=INPUTS), answer, prediction, reasonable, "fix", "r" if refined is not None else None, refined)
        return decide(c)

    assert outcome(True, 1, True) == (("reason", "reflect"), None)
    assert outcome(False, 0, True) == (("reason", "reflect"), None)
    assert outcome(True, 1, False) == ((), "correct_judged_unreasonable")
    assert outcome(True, 0, True) == ((), "wrong_judged_reasonable")
    assert outcome(True, 0, False, refined=False) == (("reflect", "refine"), None)
    assert outcome(True, 0, False, refined=True) == ((), "refinement_still_wrong")
    assert outcome(True, 0, False, refined=None) == ((), "refinement_unparsed")
    assert outcome(None, 1, None) == ((), "no_prediction")
    assert outcome(True, 1, None) == ((), "no_verdict")
    assert outcome(None, 1, None, answer=None) == ((), "no_answer")
    short = Construction(sample(0), 0, Chain(inputs=INPUTS), "Star Wars", True, False, "fix", "likes it", False)
    assert decide(short) == (("reflect", "refine"), None) and decide(short, 3) == ((), "answer_too_short")
    short.answer = "likes space operas"
    assert decide(short, 3) == ((), "refinement_too_short")
    assert set(DROPS) == {"no_answer", "no_prediction", "no_verdict", "correct_judged_unreasonable",
                          "wrong_judged_reasonable", "refinement_unparsed", "refinement_still_wrong",
                          "answer_too_short", "refinement_too_short"}  # fmt: skip


def test_a_short_answer_is_dropped_unjudged_except_in_an_evaluation(teacher):
    s, cfg = sample(1, "6"), TeacherConfig(domain="movies", generation=GenerationConfig(max_new_tokens=8), min_words=6)
    answer = seed_chain(teacher, s, "yes", "reasonable", cfg=cfg)  # 5 words
    (c,) = construct(teacher, [s], cfg)
    assert c.drop == "answer_too_short" and c.answer == answer
    assert [r["step"] for r in c.chain.replies] == ["construct-reason-1"]  # no prediction or reflection asked
    (judged,) = construct(teacher, [s], replace(cfg, min_words=5))
    assert judged.sets == ("reason", "reflect")


def test_each_branch_through_the_teacher(teacher):
    liked, disliked = sample(1, "1"), sample(0, "2")
    kept = seed_chain(teacher, liked, "yes", "reasonable")  # correct, reasonable
    seed_chain(teacher, sample(1, "3"), "yes", "not reasonable")  # correct, rejected
    seed_chain(teacher, sample(0, "4"), "yes", "reasonable")  # wrong, accepted
    corrected = seed_chain(teacher, disliked, "yes", "not reasonable", refined="no")  # wrong, rejected, fixed
    seed_chain(teacher, sample(0, "5"), "yes", "not reasonable", refined="yes")  # wrong, rejected, still wrong
    samples = [liked, sample(1, "3"), sample(0, "4"), disliked, sample(0, "5")]
    runs = {c.sample.sample_id: c for c in construct(teacher, samples, CFG)}
    assert runs["u1"].sets == ("reason", "reflect") and runs["u1"].answer == kept
    assert runs["u3"].drop == "correct_judged_unreasonable"
    assert runs["u4"].drop == "wrong_judged_reasonable"
    assert runs["u2"].sets == ("reflect", "refine") and runs["u2"].refined == "rated Toy Story 5"
    assert runs["u5"].drop == "refinement_still_wrong"
    assert all(c.chain.llm_calls == 0 for c in runs.values())  # every reply came from the seeded cache
    assert [runs[u].p_like for u in ("u1", "u3", "u4", "u2", "u5")] == [0.9] * 5  # scored beside the reply

    reason, reflect = examples(runs["u1"], "movies", {"teacher": teacher.model_id})
    assert reason.dataset == "reason" and reason.messages[-1]["content"] == f"<preference>{kept}</preference>"
    assert "Star Wars" not in reason.messages[1]["content"]  # the inference prompt: no target shown
    assert reflect.messages[-1]["content"].startswith("<judgement>reasonable</judgement>")
    negative, refine = examples(runs["u2"], "movies", {"teacher": teacher.model_id})
    assert negative.messages[-1]["content"] == "<judgement>not reasonable</judgement>\n<reflection>cite the ratings</reflection>"
    assert negative.messages[:-1] == prompts.reflect_chat("user", "movies", disliked.inputs, corrected)
    assert refine.messages[-1]["content"] == "<refined>rated Toy Story 5</refined>"
    assert refine.provenance == {"teacher": teacher.model_id, "sample_id": "u2", "draw": 0, "label": 0, "target": "50"}


def test_a_prediction_that_does_not_parse_is_asked_again_then_dropped(teacher):
    s = sample(1, "9")
    seed(teacher, prompts.reason_chat("user", "movies", s.inputs, TARGET), "<preference>likes cartoons</preference>",
         CFG.reason("user"))  # fmt: skip
    predict = prompts.predict_chat(prompts.answered_chat("user", "movies", s.inputs, "likes cartoons", TARGET), "user", "movies")
    seed(teacher, predict, "<prediction>perhaps</prediction>", CFG.predict())
    seed(teacher, predict, '{"yes": 0.6, "no": 0.4}', CFG.scored_prediction())
    (c,) = construct(teacher, [s], CFG)
    assert c.drop == "no_prediction" and c.answer == "likes cartoons" and c.p_like == 0.6
    steps = [r["step"] for r in c.chain.replies]
    assert steps == ["construct-reason-1", "construct-predict", "construct-predict (strict)", "score-prediction"]
    assert c.chain.parse_failures == ["construct-predict"] and c.chain.llm_calls == 1  # the strict retry ran the model
    assert CFG.predict().grammar and CFG.predict().max_new_tokens <= 8 and CFG.predict().prefix == "<prediction>"


def test_rejection_sampling_filters_every_draw(teacher):
    cfg = TeacherConfig(domain="movies", generation=GenerationConfig(max_new_tokens=8), draws=2)
    s = sample(1, "8")
    for draw, predicts in ((0, "yes"), (1, "no")):
        seed_chain(teacher, s, predicts, "reasonable", draw=draw, cfg=cfg)
    first, second = construct(teacher, [s], cfg)
    assert (first.draw, first.sets) == (0, ("reason", "reflect"))
    assert (second.draw, second.drop) == (1, "wrong_judged_reasonable")
    assert cfg.reason("user").temperature == 0.8 and CFG.reason("user").temperature == 0.0
    assert cfg.predict().temperature == 0.0  # draws differ in their rationale; the prediction is read greedily


def test_a_teacher_predicting_by_its_scored_p_yes_predicts_both_ways(teacher):
    """like_threshold: the prediction is P(yes) >= threshold, whatever the reply says (a yes-biased teacher), for the
    first prediction and for the refined one."""
    cfg = replace(CFG, like_threshold=0.95)
    disliked, liked = sample(0, "11"), sample(1, "12")
    first = seed_chain(teacher, disliked, "no", "reasonable", cfg=cfg, p_yes=0.9)
    seed_chain(teacher, liked, "no", "not reasonable", refined="yes", cfg=cfg, p_yes=0.93, refined_p_yes=0.97)
    answered = prompts.answered_chat("user", "movies", disliked.inputs, first, TARGET)
    seed(teacher, prompts.predict_chat(answered, "user", "movies"), "<prediction>yes</prediction>", cfg.predict())
    runs = {c.sample.sample_id: c for c in construct(teacher, [disliked, liked], cfg)}
    assert runs["u11"].prediction is False and runs["u11"].p_like == 0.9 and runs["u11"].sets == ("reason", "reflect")
    assert runs["u12"].prediction is False and runs["u12"].refined_prediction is True
    assert runs["u12"].sets == ("reflect", "refine")
    assert all(c.chain.llm_calls == 0 for c in runs.values())
    assert "score-prediction" not in [r["step"] for r in runs["u11"].chain.replies]  # the prediction was the score
    assert cfg.steps() == CFG.steps() - 1
