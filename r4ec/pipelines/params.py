"""The DAGs' parameters, as JSON schema (Airflow validates a triggered run's conf against it) and as r4ec Settings.

A parameter left null takes the value r4ec is configured with on the worker (r4ec.toml, R4EC_* variables), so a
scheduled run with no conf does what the command line would do.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from pydantic import ValidationError

from r4ec.config import Settings
from r4ec.layout import STRATEGIES
from r4ec.pipelines import PipelineError


def _nullable(schema: dict) -> dict:
    kind = schema["type"]
    return {**schema, "type": [kind, "null"]} if isinstance(kind, str) else schema


# name -> (default, JSON schema, description); the settings ones are null by default: "as configured"
SETTINGS_PARAMS: dict[str, tuple[object, dict, str]] = {
    "dataset": (None, _nullable({"type": "string", "enum": ["ml-100k", "ml-1m", "amazon-books-2018", None]}),
                "Dataset (null: as configured, ml-100k by default)."),
    "protocol": (None, _nullable({"type": "string", "enum": ["r4ec", "kar", None]}), "Sample split protocol."),
    "strategy": (None, _nullable({"type": "string", "enum": [*STRATEGIES, None]}),
                 "Knowledge strategy (iterative: the paper's reason, reflect, refine; text: no LLM, the control)."),
    "rounds": (None, _nullable({"type": "integer", "minimum": 1, "maximum": 5}), "Reflect/refine rounds."),
    "limit": (None, _nullable({"type": "integer", "minimum": 1}),
              "Knowledge for a seeded sample of this many users and items (null: as configured, all by default)."),
    "backend": (None, _nullable({"type": "string", "enum": ["llama.cpp", "transformers", "vllm", "openai", None]}),
                "LLM backend."),
    "model": (None, _nullable({"type": "string", "minLength": 1}),
              "Actor model: smollm2-135m-instruct, a local model folder, or a served name."),
    "reflector_model": (None, _nullable({"type": "string", "minLength": 1}), "Reflector model (null: the actor's)."),
    "encoder": (None, _nullable({"type": "string", "minLength": 1}), "Sentence encoder: all-MiniLM-L6-v2 or a local "
                "folder; another is a run of its own over the same knowledge (iterative-enc-allmpnetbasev2)."),
}  # fmt: skip

TRAIN_PARAMS: dict[str, tuple[object, dict, str]] = {
    "backbones": (["lr", "din"], {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "string",
                  "enum": ["lr", "din", "dien", "gru4rec", "autoint", "fignn", "dcn", "deepfm"]}},
                  "CTR backbones to train, each on base features and on the knowledge run (lr: base only)."),
    "seeds": (None, _nullable({"type": "array", "minItems": 1, "items": {"type": "integer"}}),
              "Training seeds (null: the configured seed)."),
    "epochs": (None, _nullable({"type": "integer", "minimum": 1, "maximum": 100}), "At most this many epochs."),
}  # fmt: skip

BUILD_PARAMS = {
    **SETTINGS_PARAMS,
    **TRAIN_PARAMS,
    "admit_until": (None, _nullable({"type": "string", "format": "date-time"}), "Replay: build on the ratings "
                    "before this UTC time only (r4ec data load --admit-until); r4ec_refresh admits the rest."),
    "overwrite": (False, {"type": "boolean"}, "Regenerate a knowledge run made from other inputs or settings "
                  "(unchanged prompts come from the answer cache)."),
}  # fmt: skip

REFRESH_PARAMS = {
    **SETTINGS_PARAMS,
    "start": (None, _nullable({"type": "string", "format": "date-time"}),
              "Start of the interval (UTC); null: the run's data interval."),
    "end": (None, _nullable({"type": "string", "format": "date-time"}),
            "End of the interval (UTC), the as-of time of the refreshed knowledge; null: the run's data interval."),
    "replay": (False, {"type": "boolean"}, "Replay the static dataset as arrivals: admit only the ratings before "
               "the interval's end (r4ec data load --admit-until)."),
}  # fmt: skip

RETRAIN_PARAMS = {**SETTINGS_PARAMS, **TRAIN_PARAMS}

_KNOWLEDGE = ("strategy", "rounds", "limit", "backend", "model", "reflector_model", "encoder")


def overrides(params: dict) -> dict:
    """The Settings keyword arguments that the non-null settings parameters name."""
    given = {name: params.get(name) for name in SETTINGS_PARAMS if params.get(name) is not None}
    knowledge = {name: given.pop(name) for name in _KNOWLEDGE if name in given}
    return {**given, **({"knowledge": knowledge} if knowledge else {})}


def settings_of(params: dict, **extra: object) -> Settings:
    """Settings of a run: configuration on the worker, the run's parameters over it; a bad value is one line."""
    unknown = sorted(set(params) - set(BUILD_PARAMS) - set(REFRESH_PARAMS))
    if unknown:
        raise PipelineError(f"unknown parameters: {', '.join(unknown)}")
    given = overrides(params)
    try:
        return Settings(**given, **extra)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise PipelineError(f"bad parameters: {problems}") from None


def spark_env(params: dict, **extra: object) -> dict[str, str]:
    """What a spark-submit'ed r4ec job needs to build the same Settings: R4EC_* variables (nested with __), the
    absolute data dir, and this Python for the driver and the workers."""
    settings = settings_of(params, **extra)
    env = {"R4EC_DATA_DIR": str(settings.data_dir.resolve()), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}  # fmt: skip
    for name, value in {**overrides(params), **extra}.items():
        if isinstance(value, dict):
            env.update({f"R4EC_{name.upper()}__{key.upper()}": _text(v) for key, v in value.items()})
        else:
            env[f"R4EC_{name.upper()}"] = _text(value)
    return env


def _text(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return value if isinstance(value, str) else json.dumps(value)
