"""Read tagged answers from models that do not always follow the format.

A section is the text after `<tag>` up to `</tag>`, the next opening tag, or the end of the reply: small models
often forget closing tags. Tags match case-insensitively and `judgment` counts as `judgement`.
"""

from __future__ import annotations

import re

from r4ec.knowledge.prompts import MAX_WORDS

_NEGATIVE = re.compile(r"\b(not\s+reasonable|unreasonable)\b", re.IGNORECASE)
_POSITIVE = re.compile(r"\breasonable\b", re.IGNORECASE)
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def clip_words(text: str, limit: int = MAX_WORDS) -> str:
    words = text.split()
    return text.strip() if len(words) <= limit else " ".join(words[:limit])


def section(reply: str, tag: str) -> str | None:
    """The text of `<tag>`, or None when the tag is absent or empty."""
    names = "judge?ment" if tag == "judgement" else re.escape(tag)
    match = re.search(rf"<\s*(?:{names})\s*>(.*?)(?:<\s*/\s*(?:{names})\s*>|<\s*[a-z]+\s*>|$)", reply, re.I | re.S)
    if match is None:
        return None
    text = match.group(1).strip()
    return text or None


def parse_answer(reply: str, tag: str) -> str | None:
    """The tagged answer, clipped to the word limit; None when it cannot be found."""
    text = section(reply, tag)
    return clip_words(text) if text else None


def verdict(text: str) -> bool | None:
    """True for reasonable, False for not reasonable, None when the text says neither."""
    if _NEGATIVE.search(text):
        return False
    if _POSITIVE.search(text):
        return True
    return None


def parse_judgement(reply: str) -> tuple[bool | None, str | None]:
    """(reasonable?, feedback). Without a judgement tag, a verdict in the first words of the reply still counts."""
    judged = section(reply, "judgement")
    if judged is None:
        judged = " ".join(reply.split()[:4])
    feedback = parse_answer(reply, "reflection")
    return verdict(judged) if judged else None, feedback


def parse_prediction(reply: str) -> bool | None:
    """The construction variant's like / dislike verdict."""
    text = section(reply, "prediction")
    match = _YES_NO.search(text) if text else None
    return None if match is None else match.group(1).lower() == "yes"
