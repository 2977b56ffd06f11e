"""One feature service per model input set: base (no knowledge) and one per knowledge run."""

from __future__ import annotations

from feast import FeatureService, FeatureView

from r4ec.layout import BASE_SERVICE, KnowledgeRun


def services(profiles: dict[str, FeatureView], knowledge: dict[str, FeatureView]) -> list[FeatureService]:
    base = list(profiles.values())
    found = [FeatureService(name=BASE_SERVICE, features=base, description="Profiles and behaviour history.")]
    runs = sorted({view.tags["knowledge_run"] for view in knowledge.values()})
    for folder in runs:
        run = KnowledgeRun.parse(folder)
        views = [knowledge[f"{entity}_knowledge_{run.service}"] for entity in ("user", "item")]
        sample = "" if run.limit is None else f" on a sample of {run.limit} users and {run.limit} items"
        found.append(FeatureService(name=run.service, features=base + views, tags={"knowledge_run": folder},
                                    description=f"Base + {run.name} knowledge{sample}."))  # fmt: skip
    return found
