import functools
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from r4ec.config import Settings
from r4ec.layout import RUN_NAMES, KnowledgeRun, knowledge_dir


def test_defaults_are_the_papers_protocol():
    settings = Settings()
    assert (settings.dataset, settings.protocol, settings.history_length, settings.llm_history_length) == (
        "ml-100k", "r4ec", 10, 11,
    )
    assert settings.label_threshold == 3.0
    assert settings.dbt_vars()["positive_threshold"] == 3.0


def test_books_threshold_and_kar_cap_follow_the_domain():
    settings = Settings(dataset="amazon-books-2018")
    assert settings.label_threshold == 4.0
    assert settings.kar_history_limit == 15
    assert Settings(dataset="ml-1m").kar_history_limit == 30


def test_environment_overrides_file_and_keywords_override_environment(tmp_path, monkeypatch):
    config = tmp_path / "r4ec.toml"
    config.write_text('dataset = "ml-1m"\nseed = 1\nhistory_length = 5\n')
    monkeypatch.setenv("R4EC_CONFIG", str(config))
    monkeypatch.setenv("R4EC_SEED", "2")
    settings = Settings()
    assert (settings.dataset, settings.seed, settings.history_length) == ("ml-1m", 2, 5)
    assert Settings(seed=3).seed == 3


def test_paths_derive_from_data_dir_and_dataset(tmp_path):
    settings = Settings(data_dir=tmp_path, dataset="ml-1m")
    assert settings.raw_dir == tmp_path / "raw" / "ml-1m"
    assert settings.marts_dir == tmp_path / "marts" / "ml-1m"


def test_a_run_with_adapters_has_its_own_folder_and_service(tmp_path):
    """Knowledge from a tuned actor or reflector never lands in (or is read as) the base models' run."""
    base = Settings(data_dir=tmp_path, knowledge={"limit": 5})
    for adapter in ("actor_adapter", "reflector_adapter"):
        tuned = Settings(data_dir=tmp_path, knowledge={"limit": 5, adapter: tmp_path / "adapter"})
        run = KnowledgeRun.of(tuned)
        assert (run.folder, run.service, run.name) == ("iterative-tuned-sample5", "iterative_tuned_sample5", "iterative-tuned")
        assert KnowledgeRun.parse(run.folder) == KnowledgeRun.parse(run.service) == KnowledgeRun.named(run.name, 5) == run
        assert knowledge_dir(tuned, "user") != knowledge_dir(base, "user")
    assert KnowledgeRun.of(base).folder == "iterative-sample5" and not KnowledgeRun.parse("iterative-sample5").tuned
    assert KnowledgeRun.parse("iterative-sample5-tuned") is None


@pytest.mark.parametrize("bad", [{"dataset": "netflix"}, {"train_fraction": 1.5}, {"history_length": 0}, {"nope": 1}])
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValidationError):
        Settings(**bad)


@pytest.mark.parametrize("llm", [{"actor_adapter": "a"}, {"reflector_adapter": "r"}, {"reflector_model": "m"}])
def test_the_text_strategy_names_no_model_to_tune(llm):
    """The control without an LLM: a model or adapter given with it would be recorded as what made the knowledge."""
    with pytest.raises(ValidationError, match="the text strategy asks no LLM"):
        Settings(knowledge={"strategy": "text", **llm})
    assert "text" in RUN_NAMES and "text-tuned" not in RUN_NAMES and "iterative-tuned" in RUN_NAMES


def test_more_rounds_are_a_run_of_their_own(tmp_path):
    """Two reflect / refine rounds are another knowledge run than the paper's one: folder, service and training name."""
    two = Settings(data_dir=tmp_path, knowledge={"rounds": 2, "limit": 5, "actor_adapter": tmp_path / "a"})
    run = KnowledgeRun.of(two)
    assert (run.name, run.folder, run.service) == ("iterative-r2-tuned", "iterative-r2-tuned-sample5", "iterative_r2_tuned_sample5")
    assert KnowledgeRun.parse(run.folder) == KnowledgeRun.parse(run.service) == KnowledgeRun.named(run.name, 5) == run
    assert knowledge_dir(two, "user") != knowledge_dir(Settings(data_dir=tmp_path, knowledge={"limit": 5, "actor_adapter": tmp_path / "a"}), "user")
    assert KnowledgeRun.of(Settings(knowledge={"strategy": "single", "rounds": 2})).name == "single"  # no rounds to do
    assert [KnowledgeRun.parse(name) for name in ("single-r2", "iterative-r1", "iterative-r2x")] == [None, None, None]
    with pytest.raises(ValueError, match="names no knowledge run"):
        KnowledgeRun.named("iterative-sample5")


def test_another_encoder_is_a_run_of_its_own_over_the_same_knowledge(tmp_path):
    """Table 4: the same knowledge by all-mpnet-base-v2 is served and trained under its own name, never as MiniLM's."""
    from r4ec.layout import encoder_tag, is_run_name, knowledge_run_dir, run_order, vectors_dir

    mpnet = Settings(data_dir=tmp_path, knowledge={"limit": 5, "rounds": 2, "actor_adapter": tmp_path / "a",
                                                   "encoder": str(tmp_path / "models" / "all-mpnet-base-v2")})  # fmt: skip
    run = KnowledgeRun.of(mpnet)
    assert (run.name, run.folder, run.service) == ("iterative-r2-tuned-enc-allmpnetbasev2",
                                                   "iterative-r2-tuned-enc-allmpnetbasev2-sample5",
                                                   "iterative_r2_tuned_enc_allmpnetbasev2_sample5")  # fmt: skip
    assert KnowledgeRun.parse(run.folder) == KnowledgeRun.parse(run.service) == KnowledgeRun.named(run.name, 5) == run
    minilm = mpnet.model_copy(update={"knowledge": mpnet.knowledge.model_copy(update={"encoder": "all-MiniLM-L6-v2"})})
    assert KnowledgeRun.of(minilm) == run.encoded_by(None) and KnowledgeRun.of(minilm).encoder is None
    assert knowledge_run_dir(mpnet) == knowledge_run_dir(minilm) == tmp_path / "knowledge/ml-100k/iterative-r2-tuned-sample5"
    assert vectors_dir(mpnet, "item").name == "item_knowledge_vectors-allmpnetbasev2"
    assert vectors_dir(minilm, "item").name == "item_knowledge_vectors"
    assert is_run_name("single-enc-bgem3") and not is_run_name("single-enc-bgem3-sample5") and not is_run_name("nope-enc-x")
    assert run_order("iterative") < run_order("iterative-enc-allmpnetbasev2") < run_order("filter")
    assert encoder_tag("all-MiniLM-L6-v2") is None and encoder_tag("/m/BGE-M3") == "bgem3"
    with pytest.raises(ValueError, match="needs a letter or digit"):
        encoder_tag("/m/---")


PRESETS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))


def flatten(table: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    return {key: value for name, entry in table.items()
            for key, value in (flatten(entry, (*prefix, name)) if isinstance(entry, dict) else {(*prefix, name): entry}).items()}  # fmt: skip


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads_and_sets_what_it_says(preset, monkeypatch):
    """A preset read through R4EC_CONFIG sets each of its keys (an unknown key is an error), and is listed."""
    monkeypatch.setenv("R4EC_CONFIG", str(preset))
    settings = Settings()
    for path, value in flatten(tomllib.loads(preset.read_text())).items():
        actual = functools.reduce(getattr, path, settings)
        assert actual == value or str(actual) == str(value), (path, actual, value)
    assert f"`{preset.name}`" in (preset.parent / "README.md").read_text()


def test_the_presets_are_there():
    assert {p.name for p in PRESETS} >= {"ml-1m.toml", "amazon-books.toml", "kar-protocol.toml", "qwen-1.5b.toml"}
