"""`r4ec tuning evaluate`: the figures (accuracy, verdict share, AUC of rejections, fixed / broken refinements, bootstrap
intervals) on hand-made outcomes, and the command on real ml-100k marts with the tiny model and two random adapters.
One held-out sample's tuned-arm replies are written into the real answer cache first, so the evaluation protocol (the
reflector asked without the target; a right answer it rejects is refined too) is driven down a known path."""

from __future__ import annotations

import json
import logging
import random
import shutil

import pytest

from r4ec import layout
from r4ec.cli import main
from r4ec.config import Settings
from r4ec.knowledge import prompts
from r4ec.knowledge.backends import Generation, Request, TransformersBackend
from r4ec.knowledge.cache import AnswerCache, answer_key
from r4ec.tuning.evaluate import bootstrap, metrics
from r4ec.tuning.job import teacher_config
from r4ec.tuning.ranking import auc, threshold_at_rate
from r4ec.tuning.samples import held_out_samples, held_out_users


def row(user: str, correct: bool, verdict: str | None = None, refined_correct: bool | None = None, label: int = 1,
        words: int = 40) -> dict:
    prediction = correct == bool(label)
    return {"user_id": user, "label": label, "prediction": prediction, "correct": correct, "verdict": verdict,
            "refined_correct": refined_correct, "llm_calls": 3, "answer_words": words}  # fmt: skip


def test_the_figures_count_what_they_say():
    rows = [row("1", True, "reasonable", words=10), row("1", False, "not reasonable", True, label=0, words=20),
            row("2", False, "reasonable", words=30), row("2", True, "not reasonable", False, label=0, words=40),
            row("3", False, None, words=50), {**row("3", False), "correct": None, "prediction": None}]  # fmt: skip
    m = metrics(rows)
    assert (m["samples"], m["predicted"], m["accuracy"]) == (6, 5, 2 / 5)
    # "like" predicted by the right answer on a liked target and the wrong one on a disliked target
    assert m["predicted_like"] == 2 / 5 and m["liked"] == 3 / 5
    assert m["answer_words"] == 35  # the median over every sample, answered or not
    assert m["verdict_share"] == 4 / 5 and m["rejected"] == 2
    # of the judged: wrong ones rejected 1 of 2 (TPR 0.5), right ones accepted 1 of 2 (TNR 0.5)
    assert m["auc_rejection_wrong"] == 0.5
    assert (m["refined"], m["wrong_to_right"], m["right_to_wrong"]) == (2, 1, 1)
    assert auc([True, True, False], [True, True, False]) == 1.0
    assert auc([True], [True]) is None  # one class only: no AUC


def test_the_auc_of_a_probability_counts_pairs_ranked_right_and_ties_half():
    rng = random.Random(3)
    scores = [round(rng.random(), 1) for _ in range(300)]  # rounded: many ties
    positives = [rng.random() < s for s in scores]
    pairs = [(p, n) for p, y in zip(scores, positives) if y for n, z in zip(scores, positives) if not z]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert auc(scores, positives) == pytest.approx(expected, abs=1e-12)
    assert auc([0.9, 0.8, 0.3, 0.1], [True, False, True, False]) == 0.75
    rows = [row(str(u), True) | {"p_like": u / 10, "label": int(u > 4)} for u in range(10)]
    assert metrics(rows)["auc_p_like"] == 1.0 and metrics(rows)["auc_p_rejection_wrong"] is None  # no verdict scored


def test_the_threshold_at_a_rate_predicts_like_that_often():
    scores = [0.99, 0.97, 0.97, 0.95, 0.9, 0.6]
    assert threshold_at_rate(scores, 0.5) == 0.97  # 3 of 6 at or above it
    assert sum(s >= threshold_at_rate(scores, 2 / 3) for s in scores) == 4
    assert threshold_at_rate(scores, 1.0) == 0.6 and threshold_at_rate(scores, 0.0) == 0.99
    assert threshold_at_rate([], 0.5) is None


def test_bootstrap_intervals_resample_users_and_pair_the_arms():
    base = [row(str(u), u % 2 == 0) for u in range(40)]
    tuned = [row(str(u), True) for u in range(40)]
    intervals = bootstrap({"base": base, "tuned": tuned}, "accuracy", 300, seed=1)
    assert intervals["tuned"] == (1.0, 1.0)
    low, high = intervals["base"]
    assert low < 0.5 < high and high - low < 0.4
    assert intervals["difference"][0] > 0  # paired: the tuned arm is right wherever the base is
    assert bootstrap({"base": base, "tuned": tuned}, "accuracy", 300, seed=1) == intervals  # seeded


@pytest.fixture
def settings(ml100k, tiny_model, tmp_path, monkeypatch) -> Settings:
    shutil.copytree(ml100k.marts_dir, Settings(data_dir=tmp_path).marts_dir)
    variables = {"DATA_DIR": tmp_path, "KNOWLEDGE__BACKEND": "transformers", "KNOWLEDGE__MODEL": tiny_model,
                 "KNOWLEDGE__DTYPE": "float32", "KNOWLEDGE__MAX_NEW_TOKENS": 6, "TUNING__HELD_OUT_FRACTION": 0.02}  # fmt: skip
    for name, value in variables.items():
        monkeypatch.setenv(f"R4EC_{name}", str(value))
    return Settings()


def random_adapters(settings: Settings, tiny_model) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for n, role in enumerate(("actor", "reflector")):
        torch.manual_seed(n)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules="all-linear"))
        model.save_pretrained(layout.adapter_dir(settings, role) / "adapter")


def seed_tuned_replies(settings: Settings, tiny_model) -> str:
    """The tuned pair on the first held-out sample: a right prediction, rejected by the reflector (asked without the
    target), refined, and then predicted wrong."""
    sample = held_out_samples(settings, 1)[0]
    adapters = {role: layout.adapter_dir(settings, role) / "adapter" for role in ("actor", "reflector")}
    tuned = TransformersBackend(str(tiny_model), dtype="float32", adapters=adapters)
    cfg, right = teacher_config(settings), "yes" if sample.label else "no"
    wrong, said = "no" if sample.label else "yes", bool(sample.label)
    args = ("user", "movies", sample.inputs)
    answered = prompts.answered_chat(*args, "likes comedies", sample.target)
    refine = prompts.refine_chat(*args, "likes comedies", "cite ratings", sample.target, prediction=said)
    replies = [
        (prompts.reason_chat(*args, sample.target), "actor", cfg.reason("user"), "<preference>likes comedies</preference>"),
        (prompts.predict_chat(answered, "user", "movies"), "actor", cfg.predict(), f"<prediction>{right}</prediction>"),
        (prompts.reflect_chat(*args, "likes comedies"), "reflector", cfg.reflect(),
         "<judgement>not reasonable</judgement><reflection>cite ratings</reflection>"),
        (refine, "actor", cfg.refine(), "<refined>likes dramas</refined>"),
        (prompts.predict_chat(refine + [{"role": "assistant", "content": "<refined>likes dramas</refined>"}], "user", "movies"),
         "actor", cfg.predict(), f"<prediction>{wrong}</prediction>"),
        (prompts.predict_chat(answered, "user", "movies"), "actor", cfg.scored(cfg.predict(), ("yes", "no")),
         '{"yes": 0.9, "no": 0.1}'),
        (prompts.reflect_chat(*args, "likes comedies"), "reflector",
         cfg.scored(cfg.reflect(), ("reasonable", "not reasonable")), '{"reasonable": 0.2, "not reasonable": 0.8}'),
    ]  # fmt: skip
    AnswerCache(settings.answer_cache_path).put_many(
        {answer_key(tuned.answered_by(adapter), Request.chat(chat, adapter), gen): Generation(reply, 10, 5)
         for chat, adapter, gen, reply in replies}  # fmt: skip
    )
    return sample.sample_id


@pytest.mark.integration
def test_evaluate_compares_both_arms_on_the_held_out_users_only(settings, tiny_model, capsys, caplog):
    caplog.set_level(logging.INFO, logger="r4ec")
    assert main(["tuning", "evaluate"]) == 2  # nothing trained yet: one line, no traceback
    assert "no adapter there" in capsys.readouterr().err

    random_adapters(settings, tiny_model)
    seeded = seed_tuned_replies(settings, tiny_model)
    assert main(["tuning", "evaluate", "--targets-per-user", "1"]) == 0
    assert "held-out evaluation (user):" in capsys.readouterr().out
    assert any(m.startswith("evaluation: tuned arm done: part 0: ") for m in caplog.messages)  # calls, tokens
    out = layout.evaluation_dir(settings, "user")
    outcomes = [json.loads(line) for line in (out / "outcomes.jsonl").read_text().splitlines()]
    held_out = held_out_users([str(u) for u in range(1, 944)], 0.02, settings.seed)
    by_arm = {arm: [o for o in outcomes if o["arm"] == arm] for arm in ("base", "tuned")}
    assert len(by_arm["base"]) == len(by_arm["tuned"]) == len(held_out) > 5
    assert {o["user_id"] for o in outcomes} == held_out
    ours = next(o for o in by_arm["tuned"] if o["sample_id"] == seeded)
    assert (ours["correct"], ours["verdict"], ours["refined_correct"], ours["llm_calls"]) == (True, "not reasonable", False, 0)
    assert (ours["p_like"], ours["p_reasonable"]) == (0.9, 0.2)  # both scored, as the actor and the reflector
    assert ours["answer_words"] == 2  # "likes comedies"
    figures = json.loads((out / "evaluation.json").read_text())
    assert figures["arms"]["tuned"]["right_to_wrong"] >= 1
    assert figures["built_from"]["actor_adapter"].startswith("adapter@sha256:")
    assert "| tuned |" in (out / "evaluation.md").read_text() and "predicted like" in (out / "evaluation.md").read_text()

    assert main(["tuning", "evaluate", "--entity", "item", "--targets-per-user", "1"]) == 0
    items = [json.loads(line) for line in (out.parent / "item" / "outcomes.jsonl").read_text().splitlines()]
    assert {o["user_id"] for o in items} <= held_out and len({o["user_id"] for o in items}) > 0.8 * len(held_out)
    assert all(o["sample_id"].startswith("item-") for o in items)


def other_model(tiny_model, folder):
    """The tiny Llama with other random weights: a second model to judge."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(7)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.mark.integration
def test_another_reflector_judges_the_same_answers_of_the_base_actor(settings, tiny_model, tmp_path, capsys):
    """The reflector's size (Fig. 3): no adapters needed; one sample's answer is seeded, with a different verdict from
    each model, so each arm must have asked its own judge."""
    judge = other_model(tiny_model, tmp_path / "judge")
    sample = held_out_samples(settings, 1)[0]
    cfg, args = teacher_config(settings), ("user", "movies", sample.inputs)
    answered = prompts.answered_chat(*args, "likes comedies", sample.target)
    reflect = prompts.reflect_chat(*args, "likes comedies")
    verdict, scored = cfg.reflect(), cfg.scored(cfg.reflect(), ("reasonable", "not reasonable"))
    base_id, judge_id = (TransformersBackend(str(m), dtype="float32").model_id for m in (tiny_model, judge))
    replies = [
        (base_id, prompts.reason_chat(*args, sample.target), cfg.reason("user"), "<preference>likes comedies</preference>"),
        (base_id, prompts.predict_chat(answered, "user", "movies"), cfg.predict(), "<prediction>yes</prediction>"),
        (base_id, prompts.predict_chat(answered, "user", "movies"), cfg.scored(cfg.predict(), ("yes", "no")), '{"yes": 0.9, "no": 0.1}'),
        (base_id, reflect, verdict, "<judgement>reasonable</judgement><reflection>fine</reflection>"),
        (base_id, reflect, scored, '{"reasonable": 0.7, "not reasonable": 0.3}'),
        (judge_id, reflect, verdict, "<judgement>not reasonable</judgement><reflection>cite ratings</reflection>"),
        (judge_id, reflect, scored, '{"reasonable": 0.2, "not reasonable": 0.8}'),
    ]  # fmt: skip
    AnswerCache(settings.answer_cache_path).put_many(
        {answer_key(model_id, Request.chat(chat), gen): Generation(reply, 10, 5) for model_id, chat, gen, reply in replies}
    )

    assert main(["tuning", "evaluate", "--targets-per-user", "1", "--reflector-model", str(judge)]) == 0
    assert "accuracy base" in capsys.readouterr().out
    out = layout.evaluation_dir(settings, "user", str(judge))
    assert out.name == "user-reflector-judge"
    outcomes = [json.loads(line) for line in (out / "outcomes.jsonl").read_text().splitlines()]
    by_arm = {arm: {o["sample_id"]: o for o in outcomes if o["arm"] == arm} for arm in ("base", "reflector judge")}
    assert by_arm["base"].keys() == by_arm["reflector judge"].keys() and len(by_arm["base"]) > 5
    for sample_id, base in by_arm["base"].items():  # one actor: the same answers and predictions in both arms
        other = by_arm["reflector judge"][sample_id]
        assert (other["answer_words"], other["prediction"], other["p_like"]) == (base["answer_words"], base["prediction"], base["p_like"])
    ours = (by_arm["base"][sample.sample_id], by_arm["reflector judge"][sample.sample_id])
    assert [(o["verdict"], o["p_reasonable"]) for o in ours] == [("reasonable", 0.7), ("not reasonable", 0.2)]
    assert ours[0]["refined_prediction"] is None and ours[1]["llm_calls"] >= 1  # rejected: the base actor refined it
    figures = json.loads((out / "evaluation.json").read_text())
    assert figures["built_from"]["reflector_model"].startswith("transformers:") and figures["built_from"]["reflector_model"] != figures["built_from"]["model"]
    assert "| reflector judge |" in (out / "evaluation.md").read_text()
    assert not layout.evaluation_dir(settings, "user").exists()  # the tuned pair's comparison is another folder
