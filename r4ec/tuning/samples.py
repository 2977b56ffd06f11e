"""Which users and items build the SFT data, and with which target: the held-out users are set aside first and never
enter it.

A user's sample is their LLM history (the user_prompt_inputs mart) and one of their train-split CTR samples, chosen by
a seeded hash, as the target with its label: the training period only, never valid or test. An item's sample is its
prompt inputs (item_prompt_inputs) and one train-split CTR sample of the item: the user who rated it is the target,
shown with their demographics and the interactions the sample's own history holds (before that rating). That user is
never the item's shown liker or disliker (their rating would give the label away), and a held-out user is never a
target nor shown as liker or disliker. The held-out users' samples (several targets each) are where the base and the
tuned models are evaluated: their own user samples, and item samples with them as the target.
"""

from __future__ import annotations

import hashlib

import duckdb

from r4ec import layout
from r4ec.config import Settings
from r4ec.knowledge.job import select_entities
from r4ec.tuning.construction import Sample


def _fraction(seed: int, *parts: object) -> float:
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


def held_out_users(user_ids: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded share of the users, the same whatever else changes: where base and tuned models are compared."""
    return {u for u in user_ids if _fraction(seed, "held-out", u) < fraction}


def construction_samples(settings: Settings) -> tuple[list[Sample], set[str]]:
    """(construction samples of `tuning.entities`, users then items, `tuning.limit` of each; the held-out users)."""
    users = _inputs(settings, "user")
    held_out = held_out_users(list(users), settings.tuning.held_out_fraction, settings.seed)
    samples = []
    if "user" in settings.tuning.entities:
        targets = _targets(settings, per_user=1)
        chosen = select_entities([u for u in users if u not in held_out and u in targets], settings.tuning.limit,
                                 settings.seed)  # fmt: skip
        samples += [_sample(u, users[u], t) for u in chosen for t in targets[u]]
    if "item" in settings.tuning.entities:
        samples += _item_samples(settings, users, lambda user: user not in held_out, held_out, settings.tuning.limit)
    return samples, held_out


def held_out_samples(settings: Settings, per_user: int, entity: str = "user") -> list[Sample]:
    """Samples of the held-out users only, `per_user` targets each (as the user, or as an item's target user): where
    base and tuned models are compared."""
    users = _inputs(settings, "user")
    held_out = held_out_users(list(users), settings.tuning.held_out_fraction, settings.seed)
    if entity == "item":
        return _item_samples(settings, users, held_out.__contains__, set(), None, per_item=1, per_user=per_user)
    targets = _targets(settings, per_user)
    return [_sample(u, users[u], t) for u in users if u in held_out and u in targets for t in targets[u]]


def _inputs(settings: Settings, entity: str) -> dict[str, dict]:
    path = layout.prompt_inputs_path(settings, entity)
    inputs = duckdb.sql(f"from read_parquet('{path}') where {entity}_id is not null")
    return {row[f"{entity}_id"]: row for row in inputs.to_arrow_table().to_pylist()}


def _sample(user: str, inputs: dict, target: dict) -> Sample:
    return Sample(f"user-{user}-{target['position']}", "user", inputs, target["item"], target["label"])


def _targets(settings: Settings, per_user: int) -> dict[str, list[dict]]:
    """Per user, `per_user` train-split samples (seeded) with the target item's title and attributes."""
    rows = duckdb.sql(
        f"""
        select s.user_id, s.position, s.label, s.item_id, p.title, p.release_year, p.category, p.brand
        from read_parquet('{layout.mart_path(settings, "ctr_samples")}') as s
        join read_parquet('{layout.mart_path(settings, "item_profile")}') as p using (item_id)
        where s.split = 'train'
        """
    ).to_arrow_table().to_pylist()
    ranked: dict[str, list[tuple[float, dict]]] = {}
    for row in rows:
        ranked.setdefault(row["user_id"], []).append((_fraction(settings.seed, "target", row["user_id"], row["position"]), row))
    return {
        user: [{"position": row["position"], "label": row["label"],
                "item": {k: row[k] for k in ("item_id", "title", "release_year", "category", "brand")}}
               for _, row in sorted(candidates, key=lambda pair: pair[0])[:per_user]]
        for user, candidates in ranked.items()
    }  # fmt: skip


TARGET_HISTORY = 10  # a target user's interactions shown: the CTR sample's own history (at most this many)


def _item_samples(
    settings: Settings, users: dict[str, dict], may_target, hidden: set[str], limit: int | None, per_item: int = 1,
    per_user: int | None = None,
) -> list[Sample]:  # fmt: skip
    """Per item, `per_item` train-split samples (seeded) whose user `may_target` allows and is not the item's shown
    liker or disliker, as item samples with that user as the target; `hidden` users are cut from the item's inputs.
    With `per_user`, a user is the target of at most that many items."""
    items = _inputs(settings, "item")
    titles = {row["item_id"]: row for row in duckdb.sql(
        f"select item_id, title, release_year, category, brand from read_parquet('{layout.mart_path(settings, 'item_profile')}')"
    ).to_arrow_table().to_pylist()}  # fmt: skip
    rows = duckdb.sql(
        f"""
        select s.item_id, s.user_id, s.position, s.label, s.history_item_ids, s.history_ratings
        from read_parquet('{layout.mart_path(settings, "ctr_samples")}') as s
        where s.split = 'train'
        """
    ).to_arrow_table().to_pylist()
    candidates: dict[str, list[tuple[float, dict]]] = {}
    for row in rows:
        item, user = row["item_id"], row["user_id"]
        shown = {items.get(item, {}).get("liker_user_id"), items.get(item, {}).get("disliker_user_id")}
        if item in items and user in users and may_target(user) and user not in shown:
            candidates.setdefault(item, []).append((_fraction(settings.seed, "item-target", item, user, row["position"]), row))
    samples, per_target = [], {}
    for item in select_entities(sorted(candidates), limit, settings.seed):
        for _, row in sorted(candidates[item], key=lambda pair: pair[0])[:per_item]:
            if per_user is not None and per_target.get(row["user_id"], 0) >= per_user:
                continue
            per_target[row["user_id"]] = per_target.get(row["user_id"], 0) + 1
            target = _target_user(users[row["user_id"]], row, titles)
            inputs = _without_users(items[item], hidden)
            samples.append(Sample(f"item-{item}-{row['user_id']}-{row['position']}", "item", inputs, target, row["label"]))
    return samples


def _target_user(inputs: dict, row: dict, titles: dict[str, dict]) -> dict:
    """The target user of an item sample: demographics and the interactions before the rating, oldest first."""
    history = [{**titles.get(item, {"item_id": item}), "rating": rating}
               for item, rating in zip(row["history_item_ids"][-TARGET_HISTORY:], row["history_ratings"][-TARGET_HISTORY:])]  # fmt: skip
    return {"user_id": row["user_id"], "age": inputs.get("age"), "gender": inputs.get("gender"),
            "occupation": inputs.get("occupation"), "history": history}  # fmt: skip


def _without_users(inputs: dict, users: set[str]) -> dict:
    """The item's inputs with its liker or disliker removed where they are one of `users` (held out)."""
    out = dict(inputs)
    for who in ("liker", "disliker"):
        if out.get(f"{who}_user_id") in users:
            out.update({f"{who}_user_id": None, f"{who}_rating": None, f"{who}_history": None})
    return out
