"""Which users build the SFT data, and with which target: the held-out users are set aside first and never enter it.

A user's sample is their LLM history (the user_prompt_inputs mart) and one of their train-split CTR samples, chosen by
a seeded hash, as the target with its label: the training period only, never valid or test. The held-out users'
samples (several targets each) are where the base and the tuned models are evaluated.
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


def user_samples(settings: Settings) -> tuple[list[Sample], set[str]]:
    """(construction samples of the users not held out, in user order, `tuning.limit` of them; the held-out users)."""
    users = _user_inputs(settings)
    held_out = held_out_users(list(users), settings.tuning.held_out_fraction, settings.seed)
    targets = _targets(settings, per_user=1)
    chosen = select_entities([u for u in users if u not in held_out and u in targets], settings.tuning.limit, settings.seed)
    return [_sample(u, users[u], t) for u in chosen for t in targets[u]], held_out


def held_out_samples(settings: Settings, per_user: int) -> list[Sample]:
    """Samples of the held-out users only, `per_user` targets each: where base and tuned models are compared."""
    users = _user_inputs(settings)
    held_out = held_out_users(list(users), settings.tuning.held_out_fraction, settings.seed)
    targets = _targets(settings, per_user)
    return [_sample(u, users[u], t) for u in users if u in held_out and u in targets for t in targets[u]]


def _user_inputs(settings: Settings) -> dict[str, dict]:
    inputs = duckdb.sql(f"from read_parquet('{layout.prompt_inputs_path(settings, 'user')}') where user_id is not null")
    return {row["user_id"]: row for row in inputs.to_arrow_table().to_pylist()}


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
