import pytest

from r4ec.knowledge import prompts
from r4ec.knowledge.backends import cut_at_stop
from r4ec.knowledge.parsing import clip_words, parse_answer, parse_judgement, parse_prediction, section, verdict

USER = {"user_id": "7", "age": 24, "gender": "M", "occupation": "technician",
        "history": [{"item_id": "1", "title": "Toy Story", "release_year": 1995, "category": "Animation",
                     "brand": None, "rating": 5.0}]}  # fmt: skip
BOOK = {"item_id": "B1", "title": "Dune", "release_year": None, "genres": [], "category": "Science Fiction",
        "brand": "Frank Herbert", "liker_user_id": "u1", "liker_rating": 5.0,
        "liker_history": [{"item_id": "B2", "title": "Foundation", "category": "Science Fiction",
                           "brand": "Isaac Asimov", "rating": 5.0}],
        "disliker_user_id": None, "disliker_rating": None, "disliker_history": []}  # fmt: skip


def text(chat) -> str:
    return "\n".join(message["content"] for message in chat)


def test_user_prompt_spells_out_the_history():
    chat = prompts.reason_chat("user", "movies", USER)
    assert [m["role"] for m in chat] == ["system", "user"]
    assert "A viewer (age 24, M, technician)" in text(chat)
    assert "1. Toy Story (1995), genre Animation: 5 stars" in text(chat)
    assert f"at most {prompts.MAX_WORDS} words" in text(chat)
    assert "<" not in text(chat)  # no answer template for a small model to copy: the engine prefills the tag
    assert "target" not in text(chat)  # the inference variant never shows a target item


def test_book_item_prompt_names_author_and_only_the_examples_it_has():
    chat = prompts.reason_chat("item", "books", BOOK)
    assert "The book: Dune, category Science Fiction, author or publisher Frank Herbert." in text(chat)
    assert "A reader who liked it (5 stars)" in text(chat) and "Foundation" in text(chat)
    assert "disliked" not in text(chat)
    assert "<knowledge>" in text(prompts.reason_chat("item", "books", BOOK, strict=True))


def test_reflect_and_refine_continue_the_reason_conversation():
    """What the three steps share comes first, word for word: a prefix cache computes it once per entity."""
    reason = prompts.reason_chat("item", "books", BOOK)
    reflect = prompts.reflect_chat("item", "books", BOOK, "a classic of science fiction")
    refine = prompts.refine_chat("item", "books", BOOK, "a classic of science fiction", "say who liked it")
    for chat in (reflect, refine):
        assert chat[:2] == reason
        assert chat[2] == {"role": "assistant", "content": "<knowledge>a classic of science fiction</knowledge>"}
        assert [m["role"] for m in chat[3:]] == ["user"]
    assert "<judgement>reasonable or not reasonable</judgement>" in reflect[-1]["content"]
    assert "<reflection>say who liked it</reflection>" in refine[-1]["content"]
    assert "Describe again the facts about this book" in refine[-1]["content"]  # the task, not "an improved answer"
    strict = prompts.reflect_chat("item", "books", BOOK, "a classic of science fiction", strict=True)
    assert strict[:3] == reflect[:3]  # the strict retry changes only its last turn


def test_construction_variant_shows_the_target_and_asks_the_prediction_as_its_own_turn():
    target = {"item_id": "2", "title": "Heat", "release_year": 1995, "category": "Action"}
    chat = prompts.reason_chat("user", "movies", USER, target=target)
    assert "The target movie: Heat (1995), genre Action." in text(chat) and "<prediction>" not in text(chat)
    # the inference prompt, then the target as what the answer will be checked against (shown before the task, a
    # small teacher answered with the target's title)
    inference = prompts.reason_chat("user", "movies", USER)[1]["content"]
    assert chat[1]["content"].startswith(inference + "\n\nThe target movie: Heat")
    assert chat[1]["content"].endswith("write about this viewer, not about the target.")
    answered = prompts.answered_chat("user", "movies", USER, "likes cartoons", target)
    predict = prompts.predict_chat(answered, "user", "movies")
    assert predict[:3] == answered and predict[-1]["role"] == "user" and "yes or no" in predict[-1]["content"]
    reflect = prompts.reflect_chat("user", "movies", USER, "likes cartoons", target, prediction=False)
    assert reflect[:4] == predict and reflect[4] == {"role": "assistant", "content": "<prediction>no</prediction>"}
    assert "Also check its prediction for the target movie." in reflect[-1]["content"]
    refine = prompts.refine_chat("user", "movies", USER, "likes cartoons", "too vague", target, prediction=False)
    assert refine[:5] == reflect[:5]  # the prefix the engine's cache holds from the reflect step
    assert "<reflection>too vague</reflection>" in text(refine) and "<prediction>" not in refine[-1]["content"]


def test_an_items_construction_target_is_a_user_with_their_history():
    viewer = {"user_id": "9", "age": 31, "gender": "F", "occupation": "writer",
              "history": [{"item_id": "1", "title": "Toy Story", "release_year": 1995, "rating": 4.0}]}  # fmt: skip
    chat = prompts.reason_chat("item", "books", BOOK, target=viewer)
    assert "The target reader (age 31, F, writer) rated these books" in text(chat)
    assert "1. Toy Story (1995): 4 stars" in text(chat) and "The target book" not in text(chat)
    answered = prompts.answered_chat("item", "books", BOOK, "a classic", viewer)
    assert "Will the target reader like this book?" in prompts.predict_chat(answered, "item", "books")[-1]["content"]
    reflect = prompts.reflect_chat("item", "books", BOOK, "a classic", viewer, prediction=True)
    assert "Also check its prediction for the target reader." in reflect[-1]["content"]
    inference = prompts.reason_chat("item", "books", BOOK)
    assert inference[0] == chat[0] and chat[1]["content"].startswith(inference[1]["content"] + "\n\n")
    assert "predict whether the target reader will like this book: write about this book" in chat[1]["content"]


def test_strict_variants_insist_on_the_tags():
    assert "Start your reply with <judgement>." in text(prompts.reflect_chat("user", "movies", USER, "x", strict=True))
    assert "between <refined> and </refined>" in text(prompts.refine_chat("item", "books", BOOK, "x", "y", strict=True))
    assert "between <preference> and </preference>" in text(prompts.reason_chat("user", "movies", USER, strict=True))


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("<preference>likes cartoons</preference>", "likes cartoons"),
        ("Sure! <Preference>\n likes cartoons \n</Preference> done", "likes cartoons"),
        ("<preference>no closing tag", "no closing tag"),
        ("<preference>cut by the next <reflection>x</reflection>", "cut by the next"),
        ("<preference>closed by another tag</pre> and more", "closed by another tag"),
        ("<preference>stopped at </", "stopped at"),
        ("<preference></preference>", None),
        ("no tags at all", None),
    ],
)
def test_parse_answer(reply, expected):
    assert parse_answer(reply, "preference") == expected


@pytest.mark.parametrize(
    "reply, verdict, feedback",
    [
        ("<judgement>reasonable</judgement><reflection>none</reflection>", True, "none"),
        ("<judgement>Not reasonable.</judgement>\n<reflection>Heat is a crime film.</reflection>", False, "Heat is a crime film."),
        ("<judgment>unreasonable</judgment>", False, None),
        ("Reasonable. The analysis cites the ratings.", True, None),  # no tag, verdict up front
        ("The analysis is long and it is not reasonable at all", None, None),  # verdict too late, no tag
        ("<judgement>maybe</judgement>", None, None),
        # the parser before defect 6 got each of these wrong
        ("<judgement>The answer isn't reasonable.</judgement><reflection>It ignores the 1-star ratings.</reflection>",
         False, "It ignores the 1-star ratings."),
        ("<judgement>reasonable or not reasonable</judgement><reflection>none</reflection>", None, "none"),
        ("<judgement>Not entirely reasonable</judgement>\n<reflection>Heat is a crime film.</reflection>", False,
         "Heat is a crime film."),
        ("<judgement>No</judgement><reflection>Too generic.</reflection>", False, "Too generic."),
        ("The analysis is not reasonable. It ignores the ratings.", False, None),  # no tag: six words are read
        ("The answer isn't reasonable because it invents an age.", False, None),
        ("<judgment>Mostly reasonable.</judgment><reflection>none</reflection>", True, "none"),
        ("Reasonable or not reasonable? Not reasonable.", False, None),  # the template echoed, then answered
    ],
)  # fmt: skip
def test_parse_judgement(reply, verdict, feedback):
    assert parse_judgement(reply) == (verdict, feedback)


# How reflectors phrase a verdict. Marked `# was ...`: what the parser before defect 6 returned instead.
VERDICTS = [
    ("reasonable", True),
    ("The answer is reasonable.", True),
    ("Verdict: reasonable", True),
    ("It's reasonable and grounded in the ratings.", True),
    ("Yes, the analysis is reasonable.", True),
    ("I would say it is reasonable.", True),
    ("The analysis is mostly reasonable.", True),
    ("Largely reasonable, though it could name more titles.", True),
    ("The answer is reasonable but not very specific.", True),
    ("Not only reasonable but also specific.", True),
    ("It is not unreasonable.", True),  # was False
    ("**Reasonable**", True),
    ("yes", True),  # was None
    ("The reasoning is sound.", True),  # was None
    ("Not reasonable.", False),
    ("NOT REASONABLE", False),
    ("Unreasonable.", False),
    ("**Verdict:** Not reasonable", False),
    ("The answer isn't reasonable.", False),  # was True
    ("The answer isn\u2019t reasonable.", False),  # was True
    ("The analysis is not entirely reasonable.", False),  # was True
    ("It is not fully reasonable.", False),  # was True
    ("Not quite reasonable.", False),  # was True
    ("This is not a reasonable analysis.", False),  # was True
    ("The answer is NOT a reasonable one", False),  # was True
    ("The answer is not really reasonable.", False),  # was True
    ("It doesn't seem reasonable.", False),  # was True
    ("The analysis cannot be considered reasonable.", False),  # was True
    ("It is hardly reasonable.", False),  # was True
    ("The claims are never reasonable here.", False),  # was True
    ("I don't think the answer is reasonable.", False),  # was True
    ("It is far from reasonable.", False),  # was True
    ("Neither reasonable nor specific.", False),  # was True
    ("The analysis is not specific or reasonable.", False),  # was True
    ("It would not be reasonable to keep it.", False),  # was True
    ("The analysis is partially reasonable.", False),  # was True
    ("Somewhat reasonable, but the age claim is invented.", False),  # was True
    ("Only partly reasonable.", False),  # was True
    ("The analysis is semi-reasonable.", False),  # was True
    ("The reasoning is not sound.", False),  # was None
    ("The analysis is invalid.", False),  # was None
    ("no", False),  # was None
    ("Is it reasonable? No.", False),  # was True
    ("Verdict: not reasonable. The genre claims are reasonable, but the age claim is invented.", False),
    ("Not reasonable. A reasonable analysis would cite the ratings.", False),
    ("Reasonable / Not reasonable: not reasonable", False),
    ("reasonable or not reasonable", None),  # was False
    ("Reasonable/Not reasonable", None),  # was False
    ("[reasonable | not reasonable]", None),  # was False
    ("Reasonable or unreasonable", None),  # was False
    ("reasonable or not?", None),  # was True
    ("Is the analysis reasonable?", None),  # was True
    ("The answer is reasonable. The answer is not reasonable.", None),  # was False
    ("Some claims are reasonable, others are not reasonable.", None),  # was False
    ("It would be reasonable if it cited the ratings.", None),  # was True
    ("It is reasonable only if the ratings are trusted.", None),  # was True
    ("A reasonable analysis would cite the ratings.", None),  # was True
    ("maybe", None),
    ("", None),
]


@pytest.mark.parametrize("text, expected", VERDICTS)
def test_verdict_reads_negations_hedges_and_echoes(text, expected):
    assert verdict(text) is expected


def test_prediction_and_word_limit():
    assert parse_prediction("<prediction>Yes, they will</prediction>") is True
    assert parse_prediction("<prediction>no") is False and parse_prediction("yes") is None
    assert clip_words("a " * 250) == " ".join(["a"] * 200)
    assert parse_answer("<preference>" + "w " * 300, "preference").count("w") == 200
    assert section("<judgement> </judgement>", "judgement") is None


def test_cut_at_stop_keeps_the_first_stop():
    assert cut_at_stop("<refined>a</refined> more </refined>", ("</refined>",)) == "<refined>a</refined>"
    assert cut_at_stop("no stop", ("</x>",)) == "no stop"
