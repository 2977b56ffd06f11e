"""The Feast repository's objects, built from the settings: entities, sources, views, services (DESIGN §5).

`definitions(settings)` is what `r4ec features apply` registers; feature_repo/ exposes the same objects to the
`feast` command line.
"""

from __future__ import annotations

from r4ec.config import Settings
from r4ec.features.repo.entities import ITEM, USER
from r4ec.features.repo.services import services
from r4ec.features.repo.views import knowledge_views, profile_views


def definitions(settings: Settings) -> list:
    profiles = profile_views(settings)
    knowledge = knowledge_views(settings)
    return [USER, ITEM, *profiles.values(), *knowledge.values(), *services(profiles, knowledge)]
