"""What a knowledge run was built from, read from its files: the record a training run keeps of its knowledge."""

from __future__ import annotations

import json

from r4ec import fingerprint, layout
from r4ec.config import Settings
from r4ec.layout import KnowledgeRun

# the manifest entries that say which knowledge this is (the rest: how it was cut into parts)
IDENTITY = ("strategy", "rounds", "samples", "limit", "model", "dtype", "actor_adapter", "reflector_adapter",
            "prompt_version", "max_new_tokens", "sampling_temperature", "inputs", "protocol")  # fmt: skip


def _half(settings: Settings, run: KnowledgeRun, entity: str) -> dict:
    """One entity's side of a run: its manifest's identity and its vectors' (encoder, parts hash, rows)."""
    manifest = json.loads((layout.knowledge_dir(settings, entity, run) / layout.MANIFEST).read_text())
    vectors = json.loads((layout.vectors_dir(settings, entity, run) / layout.COMPLETE).read_text())
    refreshes = sorted(p.name for p in layout.knowledge_dir(settings, entity, run).glob(layout.REFRESH_MANIFESTS))
    return {**{key: manifest.get(key) for key in IDENTITY}, **({"refreshes": refreshes} if refreshes else {}),
            "encoder": vectors["encoder"],
            "vectors": fingerprint.of_json(vectors["parts"]), "rows": vectors["rows"]}  # fmt: skip


def disagreements(settings: Settings, run: KnowledgeRun) -> list[str]:
    """What the run's user and item halves disagree on (model, prompts, encoder, ...): one entity regenerated with
    other settings makes the run a mix that no single label describes. Inputs and vectors differ by nature."""
    user, item = (_half(settings, run, entity) for entity in layout.ENTITIES)
    return sorted(key for key in user if key not in ("inputs", "refreshes", "vectors", "rows") and user[key] != item[key])


def describe(settings: Settings, run: KnowledgeRun) -> dict:
    """The run's name and, per entity, its identity and its vectors' (encoder, rows); `digest` hashes it all."""
    about: dict = {"name": run.folder, "strategy": run.strategy, "limit": run.limit}
    for entity in layout.ENTITIES:
        about[entity] = _half(settings, run, entity)
    about["digest"] = fingerprint.of_json(about)
    return about


def label(about: dict) -> str:
    """One line for a table: `iterative-sample20 · smollm2-135m-instruct@1a2b3c4d5e6f · prompts v2 · 3f9e...`."""
    user = about["user"]
    model = "no LLM" if user["model"] is None else _short(user["model"])  # None: the text strategy
    adapters = "".join(f" + {role} {fingerprint.short(user[role].split('@')[-1])}"
                       for role in ("actor_adapter", "reflector_adapter") if user.get(role))  # fmt: skip
    encoder = f" · encoder {_short(user['encoder'])}" if user.get("encoder") else ""
    return (f"{about['name']} · {model}{adapters} · prompts {user['prompt_version']}{encoder} · "
            f"{fingerprint.short(about['digest'])}")  # fmt: skip


def _short(identity: str) -> str:
    """`name@sha256:<64 hex>` as `name@<12 hex>`."""
    name, _, digest = identity.partition("@")
    return name + (f"@{fingerprint.short(digest)}" if digest else "")
