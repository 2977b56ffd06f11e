"""Parquet sources: the dbt marts, and the knowledge vectors of each encoded run."""

from __future__ import annotations

from pathlib import Path

from feast import FileSource

from r4ec.config import Settings
from r4ec.encoding import vectors_dir
from r4ec.knowledge.job import output_dir


def mart_source(settings: Settings, mart: str) -> FileSource:
    return FileSource(name=mart, path=str(settings.marts_dir / f"{mart}.parquet"), timestamp_field="event_timestamp")


def vectors_path(settings: Settings, entity: str, strategy: str) -> Path:
    run = settings.model_copy(update={"knowledge": settings.knowledge.model_copy(update={"strategy": strategy})})
    return vectors_dir(output_dir(run, entity))


def knowledge_source(settings: Settings, entity: str, strategy: str) -> FileSource:
    """All vector parts of a run; `vector` is renamed so that user and item vectors can share a feature service."""
    return FileSource(
        name=f"{entity}_knowledge_{strategy}",
        path=str(vectors_path(settings, entity, strategy) / "*.parquet"),
        timestamp_field="event_timestamp",
        field_mapping={"vector": f"{entity}_knowledge_vector"},
    )
