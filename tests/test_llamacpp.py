"""llama.cpp's server as the knowledge engine: the real binary (built by scripts/setup.sh from the PyPI sdist) with
the shipped SmolLM2 (re-quantized to F16 once), over real HTTP on loopback, and the knowledge job on it in Spark."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from r4ec import fingerprint
from r4ec.config import Settings
from r4ec.knowledge import llamacpp, prompts
from r4ec.knowledge.backends import BackendError, GenerationConfig, LlamaCppBackend, Request
from r4ec.knowledge.job import generate_knowledge, loop_config
from r4ec.knowledge.parsing import parse_judgement
from r4ec.layout import MANIFEST
from r4ec.layout import knowledge_dir as output_dir
from r4ec.local_models import SMOLLM2

pytestmark = pytest.mark.integration

USER = {"user_id": "7", "age": 24, "gender": "M", "occupation": "technician",
        "history": [{"item_id": str(n), "title": title, "release_year": year, "category": genre, "rating": rating}
                    for n, (title, year, genre, rating) in enumerate([
                        ("Toy Story", 1995, "Animation", 5.0), ("Heat", 1995, "Crime", 2.0),
                        ("Babe", 1995, "Children's", 4.0), ("Casino", 1995, "Drama", 1.0)])]}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    model = llamacpp.model_file(SMOLLM2, "auto", models)
    with llamacpp.LlamaServer(model, models / "server.log", slots=4, context_per_slot=2048) as running:
        yield running


def backend_of(server) -> LlamaCppBackend:
    return LlamaCppBackend(server.base_url, server.model.name, concurrency=4, base_id="test", context=2048)


def test_greedy_answers_are_reproducible_and_alike_alone_or_together(server):
    cfg = loop_config(Settings(), "user").reason_generation()
    others = [{**USER, "history": USER["history"][n:]} for n in range(1, 4)]
    ask = Request.chat(prompts.reason_chat("user", "movies", USER))
    (alone,) = backend_of(server).generate([ask], cfg)
    together = backend_of(server).generate([Request.chat(prompts.reason_chat("user", "movies", o)) for o in others] + [ask], cfg)
    assert alone.text.startswith("<preference>") and alone.tokens_out > 0
    assert together[-1].text == alone.text  # slots decode side by side without changing a greedy answer
    assert len({g.text for g in together}) == 4


def test_reflect_reuses_the_reason_prefix_and_always_gives_a_verdict(server):
    settings = Settings()
    cfg = loop_config(settings, "user")
    backend = backend_of(server)
    (reason,) = backend.generate([Request.chat(prompts.reason_chat("user", "movies", USER))], cfg.reason_generation())
    (reflect,) = backend.generate(
        [Request.chat(prompts.reflect_chat("user", "movies", USER, reason.text.removeprefix("<preference>")))],
        cfg.reflect_generation(),
    )
    # the system line, facts and task are not computed again: the slot's cache held them
    assert reflect.tokens_reused >= reason.tokens_in - 5 and reflect.tokens_in > reason.tokens_in
    reasonable, feedback = parse_judgement(reflect.text)
    assert reasonable is not None and feedback  # the grammar holds the reply to a verdict and a reflection


def test_llama_cpp_scores_choices_as_transformers_does(server, tmp_path):
    """A construction's like / dislike prediction and a verdict, scored by both engines from SmolLM2's next-token
    distribution: llama.cpp serves it in F16 and looks among its top candidates, transformers in float32 over the
    whole vocabulary."""
    from r4ec.knowledge.backends import TransformersBackend, parse_choice_reply

    target = {"item_id": "50", "title": "Star Wars", "release_year": 1977, "category": "Action"}
    answered = prompts.answered_chat("user", "movies", USER, "Likes animation, dislikes crime dramas.", target)
    asks = [
        (prompts.predict_chat(answered, "user", "movies"), GenerationConfig(prefix="<prediction>", choices=("yes", "no"))),
        (prompts.reflect_chat("user", "movies", USER, "Likes animation, dislikes crime dramas."),
         GenerationConfig(prefix="<judgement>", choices=("reasonable", "not reasonable"))),
    ]  # fmt: skip
    local = TransformersBackend(SMOLLM2, tmp_path / "models", "float32")
    for chat, config in asks:
        (served,) = backend_of(server).generate([Request.chat(chat)], config)
        (expected,) = local.generate([Request.chat(chat)], config)
        first = config.choices[0]
        assert served.tokens_out <= 1 and 0 < parse_choice_reply(served.text, first) < 1
        assert parse_choice_reply(served.text, first) == pytest.approx(parse_choice_reply(expected.text, first), abs=0.03)


STARTS_A_SERVER = """
import sys, time
from pathlib import Path
from r4ec.knowledge.llamacpp import LlamaServer
server = LlamaServer(Path(sys.argv[1]), Path(sys.argv[2]), slots=1, context_per_slot=512).start()
print(server.process.pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie is stopped; only its parent (here, init) can still reap it


def test_a_killed_job_leaves_no_server_behind(server, tmp_path):
    job = subprocess.Popen([sys.executable, "-c", STARTS_A_SERVER, str(server.model), str(tmp_path / "orphan.log")],
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    pid = int(job.stdout.readline())
    assert _running(pid)
    job.kill()  # SIGKILL: no finally block, no context manager exit runs
    job.wait()
    deadline = time.monotonic() + 15
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(pid)

def test_a_model_file_the_server_cannot_load_is_one_clear_error(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF not really")
    with pytest.raises(BackendError, match=r"llama-server exited .* \(log: .*broken\.log\)"):
        llamacpp.LlamaServer(broken, tmp_path / "broken.log", slots=1).start()


def test_the_job_on_llama_cpp_writes_parts_resumes_and_reports_progress(ml1m, tmp_path, caplog):
    shutil.copytree(ml1m.marts_dir, tmp_path / "marts" / "ml-1m")
    knowledge = {"backend": "llama.cpp", "limit": 4, "partition_size": 2, "max_new_tokens": 24, "slots": 4,
                 "spark_master": "local[2]", "progress_interval_s": 0.5}  # fmt: skip
    settings = Settings(data_dir=tmp_path, dataset="ml-1m", knowledge=knowledge)
    caplog.set_level(logging.INFO, logger="r4ec")
    first = generate_knowledge(settings, "user")
    rows = ds.dataset(output_dir(settings, "user"), format="parquet").to_table().to_pylist()
    assert (first.entities, first.parts_run, len(rows)) == (4, 2, 4)
    manifest = json.loads((output_dir(settings, "user") / MANIFEST).read_text())
    assert manifest["engine"].startswith("llama.cpp@sha256:") and manifest["engine"].endswith(" F16")
    for row in rows:
        assert row["model"] == llamacpp.model_identity(SMOLLM2, "auto") and row["llm_calls"] >= 2
        assert all(j is not None for j in row["judgements"])
        assert 0 < row["prompt_tokens_computed"] < row["tokens_in"]  # reflect and refine reused the reason prefix
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("user_knowledge: ")]
    assert any("generated tokens at" in line for line in lines), lines
    assert not (output_dir(settings, "user") / "_progress").exists()

    (output_dir(settings, "user") / "part-00001.parquet").unlink()  # as if killed before its last part
    again = generate_knowledge(settings, "user")
    assert (again.parts_run, again.llm_calls) == (1, 0)  # the lost part's answers come from the answer cache
    assert generate_knowledge(settings, "user").parts_run == 0


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory):
    """A LoRA on the shipped SmolLM2 with random B matrices (every linear layer): it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from r4ec.local_models import smollm2_checkpoint

    root = tmp_path_factory.mktemp("lora")
    base = smollm2_checkpoint(root / "models", "float32")
    # seeded whole: peft draws A from the global generator, and about one draw in twelve left 24 greedy tokens as they were
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                               LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))  # fmt: skip
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data = torch.randn(parameter.shape) * 0.05
    model.save_pretrained(root / "actor" / "adapter")
    return root


def test_a_peft_adapter_served_by_llama_cpp_answers_as_transformers_does(random_adapter, tmp_path):
    from r4ec.knowledge.backends import TransformersBackend, build_backend

    adapter = random_adapter / "actor" / "adapter"
    settings = Settings(data_dir=tmp_path, knowledge={"slots": 2, "actor_adapter": adapter})
    chat, cfg = prompts.reason_chat("user", "movies", USER), loop_config(settings, "user").reason_generation()
    # plain greedy: the engines' repetition penalties differ in how they count a prompt's repeated tokens
    cfg = type(cfg)(**{**cfg.__dict__, "max_new_tokens": 24, "stop": (), "repetition_penalty": 1.0})
    local = TransformersBackend(SMOLLM2, random_adapter / "models", "float32", adapters={"actor": adapter})
    expected = {name: local.generate([Request.chat(chat, name)], cfg)[0].text for name in (None, "actor")}
    assert expected[None] != expected["actor"]  # the adapter changes the answer

    with llamacpp.serving(settings, tmp_path / "logs") as engines:
        backend = build_backend(settings, engine=engines["actor"])
        served = {name: backend.generate([Request.chat(chat, name)], cfg)[0].text for name in (None, "actor")}
        with pytest.raises(BackendError, match="adapter 'reflector' is not loaded"):
            backend.generate([Request.chat(chat, "reflector")], cfg)
    assert served == expected  # greedy, the same words: the conversion kept every LoRA pair where it belongs
    assert backend.model_id.endswith(f":actor=adapter@{fingerprint.of_folder(adapter)}")  # a retrained one is new
    assert len(list((tmp_path / "models" / "adapters").glob("*.lora.gguf"))) == 1


def test_one_source_and_flags_built_for_two_cpus_is_one_engine(tmp_path, monkeypatch):
    """A study moves between machines: answers and parts from a build for another CPU are the same engine's."""
    def identity(cpu: str, flags: str) -> str:
        (tmp_path / "bin").mkdir(exist_ok=True)
        (tmp_path / "bin" / "llama-server").write_text("")
        build = {"key": f"sha flags targets cpu:{cpu}", "sdist_sha256": "832db0699007f1be95a7", "cmake_flags": flags}
        (tmp_path / "BUILD.json").write_text(json.dumps(build))
        return llamacpp.engine_identity()

    monkeypatch.setenv("R4EC_LLAMA_CPP", str(tmp_path))
    assert identity("avx2", "-DGGML_NATIVE=ON") == identity("avx512", "-DGGML_NATIVE=ON")
    assert identity("avx2", "-DGGML_NATIVE=ON") != identity("avx2", "-DGGML_NATIVE=OFF")
    assert identity("avx2", "-DGGML_NATIVE=ON").startswith("llama.cpp@sha256:832db0699007f1be+")


@pytest.mark.parametrize("quantization", ["Q8_0", "Q4_0"])
def test_the_quantized_types_offered_run_on_this_cpu(quantization, tmp_path):
    """`--quantization` through the real binary. On CPUs with Intel AMX the native build's kernels for quantized types
    died with "illegal instruction" (F16, the default, never reaches them), until the build left AMX out."""
    model = llamacpp.model_file(SMOLLM2, quantization, tmp_path)
    command = [str(llamacpp.binary("llama-batched-bench")), "-m", str(model), "-c", "512", "-npp", "32", "-ntg", "4",
               "-npl", "2", "-t", "2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    assert "|    32 |      4 |    2 |" in done.stdout  # its table's row: prompt, generated, parallel sequences
