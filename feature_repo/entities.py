"""Entities: user and item (r4ec/features/repo/entities.py)."""

from r4ec.features.repo.entities import ITEM, USER

__all__ = ["ITEM", "USER"]
