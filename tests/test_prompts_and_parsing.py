import pytest

from r4ec.knowledge import prompts
from r4ec.knowledge.backends import cut_at_stop
from r4ec.knowledge.parsing import clip_words, parse_answer, parse_judgement, parse_prediction, section

USER = {"user_id": "7", "age": 24, "gender": "M", "occupation": "technician",
        "history": [{"item_id": "1", "title": "Toy Story", "release_year": 1995, "category": "Animation",
                     "brand": None, "rating": 5.0}]}  # fmt: skip
BOOK = {"item_id": "B1", "title": "Dune", "release_year": None, "genres": [], "category": "Science Fiction",
        "brand": "Frank Herbert", "liker_user_id": "u1", "liker_rating": 5.0,
        "liker_history": [{"item_id": "B2", "title": "Foundation", "category": "Science Fiction",
                           "brand": "Isaac Asimov", "rating": 5.0}],
        "disliker_user_id": None, "disliker_rating": None, "disliker_history": []}  # fmt: skip


def test_user_prompt_spells_out_the_history():
    text = prompts.reason_prompt("user", "movies", USER)
    assert "A viewer (age 24, M, technician)" in text
    assert "1. Toy Story (1995), genre Animation: 5 stars" in text
    assert "<preference>your analysis</preference>" in text and "200 words" in text
    assert "target" not in text  # the inference variant never shows a target item


def test_book_item_prompt_names_author_and_only_the_examples_it_has():
    text = prompts.reason_prompt("item", "books", BOOK)
    assert "The book: Dune, category Science Fiction, author or publisher Frank Herbert." in text
    assert "A reader who liked it (5 stars)" in text and "Foundation" in text
    assert "disliked" not in text
    assert "<knowledge>" in text


def test_construction_variant_shows_the_target_and_asks_for_a_verdict():
    target = {"item_id": "2", "title": "Heat", "release_year": 1995, "category": "Action"}
    text = prompts.reason_prompt("user", "movies", USER, target=target)
    assert "The target movie: Heat (1995), genre Action." in text and "<prediction>yes or no</prediction>" in text
    refine = prompts.refine_prompt("user", "movies", USER, "likes cartoons", "too vague", target=target)
    assert "<reflection>too vague</reflection>" in refine and "<prediction>" in refine


def test_strict_variants_insist_on_the_tags():
    assert "Start your reply with <judgement>." in prompts.reflect_prompt("user", "movies", USER, "x", strict=True)
    assert "Start your reply with <refined>." in prompts.refine_prompt("item", "books", BOOK, "x", "y", strict=True)


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("<preference>likes cartoons</preference>", "likes cartoons"),
        ("Sure! <Preference>\n likes cartoons \n</Preference> done", "likes cartoons"),
        ("<preference>no closing tag", "no closing tag"),
        ("<preference>cut by the next <reflection>x</reflection>", "cut by the next"),
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
    ],
)  # fmt: skip
def test_parse_judgement(reply, verdict, feedback):
    assert parse_judgement(reply) == (verdict, feedback)


def test_prediction_and_word_limit():
    assert parse_prediction("<prediction>Yes, they will</prediction>") is True
    assert parse_prediction("<prediction>no") is False and parse_prediction("yes") is None
    assert clip_words("a " * 250) == " ".join(["a"] * 200)
    assert parse_answer("<preference>" + "w " * 300, "preference").count("w") == 200
    assert section("<judgement> </judgement>", "judgement") is None


def test_cut_at_stop_keeps_the_first_stop():
    assert cut_at_stop("<refined>a</refined> more </refined>", ("</refined>",)) == "<refined>a</refined>"
    assert cut_at_stop("no stop", ("</x>",)) == "no stop"
