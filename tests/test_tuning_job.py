"""`r4ec tuning build-data` on real ml-100k marts, as a real local Spark job with the tiny random model as teacher.
One sample's replies are written into the real answer cache first (a correct, reasonable answer), so the data sets
get an example through the whole job; the others go through the model (and are dropped: it writes noise)."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from r4ec import layout
from r4ec.cli import main
from r4ec.config import Settings
from r4ec.knowledge import prompts
from r4ec.knowledge.backends import Generation, Request, TransformersBackend
from r4ec.knowledge.cache import AnswerCache, answer_key
from r4ec.tuning.job import teacher_config
from r4ec.tuning.ranking import auc
from r4ec.tuning.samples import construction_samples, held_out_samples, held_out_users

pytestmark = pytest.mark.integration
USERS = 6


@pytest.fixture
def settings(ml100k, tiny_model, tmp_path, monkeypatch) -> Settings:
    """What the command will run with: the teacher's settings as R4EC_* variables (the CLI reads them too)."""
    shutil.copytree(ml100k.marts_dir, Settings(data_dir=tmp_path).marts_dir)
    variables = {"DATA_DIR": tmp_path, "KNOWLEDGE__BACKEND": "transformers", "KNOWLEDGE__MODEL": tiny_model,
                 "KNOWLEDGE__DTYPE": "float32", "KNOWLEDGE__MAX_NEW_TOKENS": 8, "KNOWLEDGE__PARTITION_SIZE": 4,
                 "KNOWLEDGE__SPARK_MASTER": "local[2]", "TUNING__LIMIT": USERS,
                 "TUNING__MIN_ANSWER_WORDS": 5}  # the seeded answer has 7 words; 8-token replies rarely reach 20  # fmt: skip
    for name, value in variables.items():
        monkeypatch.setenv(f"R4EC_{name}", str(value))
    return Settings()


def seed_a_kept_answer(settings: Settings, tiny_model) -> str:
    """The first sample's teacher replies: the right prediction, judged reasonable."""
    sample = construction_samples(settings)[0][0]
    model_id = TransformersBackend(str(tiny_model), dtype="float32").model_id
    cfg, cache = teacher_config(settings), AnswerCache(settings.answer_cache_path)
    predicts = "yes" if sample.label else "no"
    answer = "enjoys light comedies rated 4 and 5"
    answered = prompts.answered_chat("user", "movies", sample.inputs, answer, sample.target)
    replies = [
        (prompts.reason_chat("user", "movies", sample.inputs, sample.target), cfg.reason("user"),
         f"<preference>{answer}</preference>"),
        (prompts.predict_chat(answered, "user", "movies"), cfg.predict(), f"<prediction>{predicts}</prediction>"),
        (prompts.predict_chat(answered, "user", "movies"), cfg.scored_prediction(), '{"yes": 0.8, "no": 0.2}'),
        (prompts.reflect_chat("user", "movies", sample.inputs, answer, sample.target, prediction=bool(sample.label)),
         cfg.reflect(), "<judgement>reasonable</judgement>\n<reflection>none</reflection>"),
    ]  # fmt: skip
    cache.put_many({answer_key(model_id, Request.chat(chat, None, 0), gen): Generation(reply, 10, 5)
                    for chat, gen, reply in replies})  # fmt: skip
    return sample.sample_id


def test_build_data_writes_the_sets_and_a_card_without_held_out_users(settings, tiny_model, capsys):
    kept = seed_a_kept_answer(settings, tiny_model)
    assert main(["tuning", "build-data"]) == 0
    assert "SFT data: 12 samples" in capsys.readouterr().out
    sft = layout.sft_dir(settings)
    card = json.loads((sft / "card.json").read_text())
    assert card["constructions"] == 2 * USERS  # as many items as users
    assert {e: c["constructions"] for e, c in card["by_entity"].items()} == {"user": USERS, "item": USERS}
    assert card["examples"]["reason"] >= 1 and card["examples"]["reflect"] >= 1
    assert sum(card["dropped"].values()) == 2 * USERS - card["examples"]["reason"] - card["examples"]["refine"]
    reason = [json.loads(line) for line in (sft / "reason.jsonl").read_text().splitlines()]
    ours = [e for e in reason if e["provenance"]["sample_id"] == kept]
    assert len(ours) == 1 and ours[0]["messages"][-1]["content"] == "<preference>enjoys light comedies rated 4 and 5</preference>"
    assert ours[0]["messages"][0]["role"] == "system" and ours[0]["provenance"]["prompt_version"] == prompts.PROMPT_VERSION
    assert ours[0]["provenance"]["construction_version"] == prompts.CONSTRUCTION_VERSION
    parts = pq.read_table(sorted(layout.construction_dir(settings).glob(layout.part_name_glob()))).to_pylist()
    assert next(r["p_like"] for r in parts if r["sample_id"] == kept) == 0.8  # the first prediction, scored
    asked = [r for r in parts if r["prediction"] is not None]
    assert all("score-prediction" in {step["step"] for step in r["replies"]} for r in asked)
    assert "teacher_auc_p_like" in card and "teacher_threshold_at_like_rate" in card

    held_out = set(card["held_out_users"])
    users = {line["provenance"]["sample_id"].split("-")[1] for name in ("reason", "reflect", "refine")
             for line in map(json.loads, (sft / f"{name}.jsonl").read_text().splitlines())
             if line["provenance"]["sample_id"].startswith("user-")}  # fmt: skip
    assert held_out and not users & held_out
    assert 0.05 < len(held_out) / 943 < 0.15  # about held_out_fraction of the users
    assert held_out == held_out_users([str(u) for u in range(1, 944)], 0.1, settings.seed)


def test_a_second_run_asks_the_teacher_nothing(settings, capsys):
    args = ["tuning", "build-data"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "0 parts run now, 0 LLM calls" in again and again.split(";")[0] == first.split(";")[0]
    assert main([*args, "--users", "3"]) == 2  # other settings: refused, not mixed
    assert "pass --overwrite" in capsys.readouterr().err


def test_held_out_users_never_enter_the_construction_samples(settings):
    """Not as a user, not as an item's target, not as the liker or disliker an item's prompt shows; and an item's
    target is never the user whose rating the prompt shows (it would give the label away)."""
    everyone = Settings(data_dir=settings.data_dir, tuning={"limit": None})
    samples, held_out = construction_samples(everyone)
    users = [s for s in samples if s.entity == "user"]
    items = [s for s in samples if s.entity == "item"]
    assert len(users) == 943 - len(held_out) and len(items) > 0.8 * 1682  # items with a train-split rating to target
    assert not {s.inputs["user_id"] for s in users} & held_out
    assert not {s.target["user_id"] for s in items} & held_out
    shown = {s.inputs[f"{who}_user_id"] for s in items for who in ("liker", "disliker")}
    assert not shown & held_out and None in shown  # some were held out, and removed
    assert all(s.target["user_id"] not in (s.inputs["liker_user_id"], s.inputs["disliker_user_id"]) for s in items)
    some = items[0]
    assert 1 <= len(some.target["history"]) <= 10 and some.target["history"][0]["title"]
    assert some.sample_id.startswith(f"item-{some.inputs['item_id']}-{some.target['user_id']}-")

    evaluation = held_out_samples(everyone, 2, "item")
    per_user = {}
    for s in evaluation:
        per_user[s.target["user_id"]] = per_user.get(s.target["user_id"], 0) + 1
    assert set(per_user) <= held_out and max(per_user.values()) == 2 and len(per_user) > 0.8 * len(held_out)


def test_the_card_says_how_well_the_teacher_ranks_likes():
    from r4ec.tuning.job import _tally

    labels, p_like = [1, 1, 1, 0, 0, 1, 0, 1], [0.99, 0.97, 0.9, 0.95, 0.8, 0.96, None, 0.98]
    rows = [{"label": y, "p_like": p, "prediction": True, "sets": [], "drop": "x", "reasonable": None, "tokens_in": 0,
             "tokens_out": 0} for y, p in zip(labels, p_like)]  # fmt: skip
    card = _tally(rows)
    scored = [(p, y) for p, y in zip(p_like, labels) if p is not None]
    assert card["teacher_auc_p_like"] == auc([p for p, _ in scored], [y == 1 for _, y in scored]) == 0.9
    assert card["teacher_threshold_at_like_rate"] == 0.95  # 5 of the 7 scored are liked: the 5th highest P(yes)
    assert card["teacher_said_yes"] == 8
