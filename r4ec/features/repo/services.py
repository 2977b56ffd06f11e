"""One feature service per model input set: base (no knowledge) and one per knowledge run."""

from __future__ import annotations

from feast import FeatureService, FeatureView


def services(profiles: dict[str, FeatureView], knowledge: dict[str, FeatureView]) -> list[FeatureService]:
    base = list(profiles.values())
    found = [FeatureService(name="base", features=base, description="Profiles and behaviour history.")]
    strategies = sorted({name.rsplit("_", 1)[1] for name in knowledge})
    for strategy in strategies:
        views = [knowledge.get(f"{entity}_knowledge_{strategy}") for entity in ("user", "item")]
        if all(views):
            found.append(FeatureService(name=strategy, features=base + views, description=f"Base + {strategy} knowledge."))
    return found
