"""Read tagged answers from models that do not always follow the format.

A section is the text after `<tag>` up to a closing tag (any: "</pre>" closes "<preference>" for SmolLM2, and
replies stop at the first "</"), the next opening tag, or the end of the reply: small models
often forget closing tags. Tags match case-insensitively and `judgment` counts as `judgement`.
"""

from __future__ import annotations

import re

CLIP_WORDS = 200  # a kept answer is cut here (the prompts ask for MAX_WORDS = 150): the encoder reads ~256 tokens

_VERDICT_WORDS = {"reasonable": True, "unreasonable": False}
# Read only when no (un)reasonable gives a verdict: "the reasoning is not sound".
_OTHER_WORDS = {
    "sound": True, "unsound": False, "valid": True, "invalid": False, "acceptable": True, "unacceptable": False,
    "plausible": True, "implausible": False, "justified": True, "unjustified": False,
}  # fmt: skip
_NEGATORS = {"not", "no", "never", "hardly", "barely", "scarcely", "nor", "neither", "cannot", "isnt", "arent", "wasnt",
             "werent", "dont", "doesnt", "didnt", "cant", "couldnt", "wont", "wouldnt", "shouldnt", "aint"}  # fmt: skip
_NOT_A_NEGATION = {"only", "just", "merely"}  # "not only reasonable but also specific"
_PARTIAL = {"partially", "partly", "somewhat", "semi", "half", "moderately", "marginally", "borderline", "questionably"}
_MODALS = {"would", "could", "should", "might", "may", "must", "ought"}
_MODAL_VERBS = {"be", "have", "been", "seem", "appear", "look", "become"}  # "would be reasonable", not "would say"
_CONDITIONS = {"if", "unless", "whether", "provided", "assuming"}
_ATTRIBUTIVE = {"a", "an", "the", "any", "such", "more"}  # "a reasonable analysis would ..."
_CLAUSE_WORDS = {"but", "however", "although", "though", "yet", "while", "whereas", "because", "since", "so", "thus",
                 "therefore", "hence", "and"}  # fmt: skip
_SENTENCE_END = {".", "!", "?"}
_DECORATION = {"'", "`", "*", "_", '"', "\u201c", "\u201d"}  # markdown and quotes: neither words nor clause breaks
_LEADS = {"verdict", "judgement", "judgment", "decision", "conclusion"}
_LEAD_MARKS = {":", "-", "=", "is", "was"}
_UNTAGGED_WORDS = 6  # without a judgement tag, a verdict must open the reply
_WINDOW = 5  # words looked back from a verdict word for a negation, within its clause
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|\S")
# The template's options echoed back: "reasonable or not reasonable", "Reasonable / Not reasonable", "[a | b]".
_ECHO = re.compile(
    r"\b(?:not\s+|un)?reasonable\s*(?:or|/|\||vs\.?|versus)\s*(?:(?:not\s+|un)?reasonable\b|not\b(?!\s*[a-z]))"
)
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def clip_words(text: str, limit: int = CLIP_WORDS) -> str:
    words = text.split()
    return text.strip() if len(words) <= limit else " ".join(words[:limit])


def section(reply: str, tag: str) -> str | None:
    """The text of `<tag>`, or None when the tag is absent or empty."""
    names = "judge?ment" if tag == "judgement" else re.escape(tag)
    match = re.search(rf"<\s*(?:{names})\s*>(.*?)(?:<\s*/|<\s*[a-z]+\s*>|$)", reply, re.I | re.S)
    if match is None:
        return None
    text = match.group(1).strip()
    return text or None


def parse_answer(reply: str, tag: str) -> str | None:
    """The tagged answer, clipped to the word limit; None when it cannot be found."""
    text = section(reply, tag)
    return clip_words(text) if text else None


def verdict(text: str) -> bool | None:
    """True for reasonable, False for not reasonable, None when the text gives no verdict or two.

    Every "reasonable" / "unreasonable" is read with the words before it in its clause (at most five; a clause ends
    at punctuation or at but / and / because ...): a negation there (not, n't, never, hardly, no, nor, far from)
    flips it, so "isn't reasonable", "not entirely reasonable", "not a reasonable analysis" are not reasonable and
    "not unreasonable" is reasonable. Hedges: "mostly / largely reasonable" is reasonable; "partially / partly /
    somewhat reasonable" is not, since the prompt calls an analysis reasonable only if every claim holds. A verdict
    in a question says nothing unless a yes / no follows it; a hypothetical one ("would be reasonable if", "a
    reasonable analysis would") says nothing. The template's options echoed back ("reasonable or not reasonable")
    are dropped, and what remains must agree, else None. A lead ("Verdict: ...") decides when it gives a verdict;
    "sound", "valid" and the like count only when no "reasonable" does; a bare "yes" / "no" answers the question.
    """
    tokens = _tokens(text)
    words = [t for t in tokens if t[0].isalpha()]
    if words in (["yes"], ["no"]):
        return words[0] == "yes"
    lead = _lead(tokens)
    for span in ([lead] if lead else []) + [tokens]:
        found = _polarities(span, _VERDICT_WORDS) or _polarities(span, _OTHER_WORDS)
        if len(found) == 1:
            return found.pop()
        if found:
            return None  # both verdicts
    return None


def _tokens(text: str) -> list[str]:
    """Lowercase words (apostrophes kept) and punctuation; echoed options become a break, line breaks end sentences."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)  # "semi-reasonable" -> "semi reasonable"
    text = _ECHO.sub(" | ", text).replace("\n", " . ")
    return [t for t in _TOKEN.findall(text) if t not in _DECORATION]


def _lead(tokens: list[str]) -> list[str] | None:
    """The sentence after "Verdict:" / "My judgement is", when there is one."""
    for n, token in enumerate(tokens[:-1]):
        if token in _LEADS and tokens[n + 1] in _LEAD_MARKS:
            rest = tokens[n + 2 :]
            end = next((i for i, t in enumerate(rest) if t in _SENTENCE_END), len(rest))
            return rest[: end + 1]
    return None


def _polarities(tokens: list[str], vocabulary: dict[str, bool]) -> set[bool]:
    found = set()
    for n, token in enumerate(tokens):
        if token in vocabulary:
            polarity = _polarity(tokens, n, vocabulary[token])
            if polarity is not None:
                found.add(polarity)
    return found


def _negates(tokens: list[str], n: int) -> bool:
    token, following = tokens[n], tokens[n + 1] if n + 1 < len(tokens) else ""
    if token == "not":
        return following not in _NOT_A_NEGATION
    if token == "far":
        return following == "from"
    return token in _NEGATORS or token.endswith("n't")


def _polarity(tokens: list[str], n: int, positive: bool) -> bool | None:
    """What the verdict word at n says, given its clause; None for a question or a hypothetical."""
    end = next((i for i in range(n + 1, len(tokens)) if tokens[i] in _SENTENCE_END), len(tokens))
    if end < len(tokens) and tokens[end] == "?":  # "Is it reasonable? No." answers it; a bare question does not
        reply = tokens[end + 1] if end + 1 < len(tokens) else ""
        return None if reply not in ("yes", "no") else positive == (reply == "yes")
    before: list[int] = []  # positions of the words before it in its clause, nearest first
    for k in range(n - 1, -1, -1):
        if len(before) == _WINDOW or not tokens[k][0].isalpha() or tokens[k] in _CLAUSE_WORDS:
            break
        before.append(k)
    if any(_negates(tokens, k) for k in before):
        return not positive  # a negated verdict stands even in a conditional: "would not be reasonable"
    window = [tokens[k] for k in before]
    if not positive or _PARTIAL.intersection(window):
        return False
    after: list[str] = []
    for token in tokens[n + 1 : n + 3]:
        if not token[0].isalpha() or token in _CLAUSE_WORDS:
            break
        after.append(token)
    hypothetical = (
        bool(_CONDITIONS.intersection(window))
        or any(tokens[k] in _MODALS and tokens[k + 1] in _MODAL_VERBS for k in before)
        or bool(_CONDITIONS.intersection(after))
        or (bool(window) and window[0] in _ATTRIBUTIVE and bool(_MODALS.intersection(after)))
    )
    return None if hypothetical else True


def parse_judgement(reply: str) -> tuple[bool | None, str | None]:
    """(reasonable?, feedback). Without a judgement tag, a verdict in the first six words of the reply still counts
    ("The analysis is not reasonable."); a "reasonable" further on is more likely discussion than a verdict."""
    judged = section(reply, "judgement")
    if judged is None:
        judged = " ".join(reply.split()[:_UNTAGGED_WORDS])
    feedback = parse_answer(reply, "reflection")
    return verdict(judged) if judged else None, feedback


def parse_prediction(reply: str) -> bool | None:
    """The construction variant's like / dislike verdict."""
    text = section(reply, "prediction")
    match = _YES_NO.search(text) if text else None
    return None if match is None else match.group(1).lower() == "yes"
