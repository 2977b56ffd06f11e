"""Parquet sources: the dbt marts, and the knowledge vectors of each encoded run."""

from __future__ import annotations

from feast import FileSource

from r4ec import layout
from r4ec.config import Settings
from r4ec.layout import KnowledgeRun


def mart_source(settings: Settings, mart: str) -> FileSource:
    return FileSource(name=mart, path=str(layout.mart_path(settings, mart)), timestamp_field="event_timestamp")


def knowledge_source(settings: Settings, entity: str, run: KnowledgeRun) -> FileSource:
    """All vector parts of a run; `vector` and `quality` are renamed so that user and item vectors can share a
    feature service."""
    return FileSource(
        name=f"{entity}_knowledge_{run.service}",
        path=str(layout.vectors_dir(settings, entity, run) / "part-*.parquet"),
        timestamp_field="event_timestamp",
        field_mapping={"vector": f"{entity}_knowledge_vector", "quality": f"{entity}_knowledge_quality"},
    )
