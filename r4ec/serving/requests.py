"""A ranking request, read from raw bytes: whatever a client sends is either a RankRequest or a BadRequest with a
status and a one-line reason. Ids become strings here (the entities' join keys are strings)."""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_BODY_BYTES = 64 * 1024  # 1,000 ids of 40 characters, with room to spare
MAX_ITEMS = 1000
MAX_ID_CHARS = 200
FIELDS = {"user_id", "item_ids", "top_k"}


class BadRequest(Exception):
    def __init__(self, status: int, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.kind, self.reason = status, kind, reason


@dataclass(frozen=True)
class RankRequest:
    user_id: str
    item_ids: list[str]
    top_k: int | None = None


def parse_rank_request(body: bytes) -> RankRequest:
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(413, "too_large", f"the body has {len(body):,} bytes; at most {MAX_BODY_BYTES:,}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(400, "encoding", f"the body is not UTF-8 (byte {error.start})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise BadRequest(400, "json", f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except (ValueError, RecursionError) as error:
        raise BadRequest(400, "json", f"malformed JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadRequest(422, "invalid", f"the body must be a JSON object, not {_kind(data)}")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise BadRequest(422, "invalid", f"unknown fields: {', '.join(unknown)} (known: item_ids, top_k, user_id)")
    for name in ("user_id", "item_ids"):
        if name not in data:
            raise BadRequest(422, "invalid", f"{name} is missing")
    return RankRequest(_id(data["user_id"], "user_id"), _item_ids(data["item_ids"]), _top_k(data.get("top_k")))


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _id(value: object, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(422, "invalid", f"{name} must be a string or an integer, not {_kind(value)}")
    text = str(value)
    if not text or len(text) > MAX_ID_CHARS or not text.isprintable():
        raise BadRequest(422, "invalid", f"{name} must be 1 to {MAX_ID_CHARS} printable characters")
    return text


def _item_ids(value: object) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(422, "invalid", f"item_ids must be an array, not {_kind(value)}")
    if not 1 <= len(value) <= MAX_ITEMS:
        raise BadRequest(422, "invalid", f"item_ids has {len(value):,} ids; it takes 1 to {MAX_ITEMS:,}")
    ids = [_id(item, f"item_ids[{n}]") for n, item in enumerate(value)]
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise BadRequest(422, "invalid", f"item_ids holds '{item}' more than once")
        seen.add(item)
    return ids


def _top_k(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(422, "invalid", "top_k must be a positive integer")
    return value
