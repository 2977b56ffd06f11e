"""Sources, feature views and feature services, built from r4ec's settings (R4EC_* variables, r4ec.toml) exactly
as `r4ec features apply` builds them: see r4ec/features/repo/."""

from r4ec.config import Settings
from r4ec.features.repo.services import services
from r4ec.features.repo.views import knowledge_views, profile_views

_settings = Settings()
_profiles = profile_views(_settings)
_knowledge = knowledge_views(_settings)

globals().update(_profiles)
globals().update(_knowledge)
FEATURE_SERVICES = services(_profiles, _knowledge)
for _service in FEATURE_SERVICES:
    globals()[f"{_service.name}_service"] = _service
