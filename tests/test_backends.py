"""Backend construction and LoRA adapters on the real transformers backend."""

from __future__ import annotations

import builtins
import json
import shutil

import pytest

from r4ec.config import Settings
from r4ec.knowledge.backends import (
    BackendError,
    GenerationConfig,
    OpenAIBackend,
    Request,
    TransformersBackend,
    VllmBackend,
    adapter_names,
    build_backend,
    parse_choice_reply,
    starts_choice,
)  # fmt: skip
from r4ec.knowledge.job import loop_config
from r4ec.knowledge.loop import run_loop
from tests.sample_files import ask_chat

GEN = GenerationConfig(max_new_tokens=10)


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    """Two LoRA adapters with random (non-zero) weights on the tiny model: an actor and a reflector."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapters")
    paths = {}
    for seed, name in enumerate(("actor", "reflector")):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(folder / name)
        paths[name] = folder / name
    return paths


def test_each_adapter_and_the_base_model_answer_differently(tiny_model, adapters):
    backend = TransformersBackend(str(tiny_model), dtype="float32", adapters=adapters)
    ask = Request.chat(ask_chat("Describe a viewer who loves Heat (1995)."))
    texts = {
        name: backend.generate([Request(ask.messages, adapter=name)], GEN)[0].text for name in ("actor", "reflector", None)
    }
    assert len(set(texts.values())) == 3
    mixed = backend.generate([Request(ask.messages, "actor"), Request(ask.messages, None)], GEN)
    assert [g.text for g in mixed] == [texts["actor"], texts[None]]  # grouped per adapter, returned in order
    assert "actor=actor" in backend.model_id and "reflector=reflector" in backend.model_id
    with pytest.raises(BackendError, match="adapter 'critic' is not loaded"):
        backend.generate([Request(ask.messages, "critic")], GEN)


def test_the_loop_sends_actor_and_reflector_steps_to_their_adapters(tiny_model, adapters, tmp_path):
    settings = Settings(
        data_dir=tmp_path,
        knowledge={"backend": "transformers", "model": str(tiny_model), "dtype": "float32", "max_new_tokens": 6, "prefill": False,
                   "actor_adapter": adapters["actor"], "reflector_adapter": adapters["reflector"]},
    )  # fmt: skip
    assert adapter_names(settings.knowledge) == ("actor", "reflector")
    cfg = loop_config(settings, "user")
    backend = build_backend(settings)
    seen = []
    generate = backend.generate
    backend.generate = lambda requests, config, on_result=None: (
        seen.extend(r.adapter for r in requests) or generate(requests, config, on_result)
    )
    user = {"user_id": "1", "history": [{"item_id": "1", "title": "Heat", "category": "Action", "rating": 4.0}]}
    run_loop(backend, [user], cfg)
    assert seen == ["actor", "actor", "reflector", "reflector"]  # reason (+ strict retry), reflect (+ strict retry)


def test_openai_backend_is_built_from_settings():
    settings = Settings(knowledge={"backend": "openai", "model": "teacher", "openai_base_url": "http://127.0.0.1:9/v1"})
    backend = build_backend(settings)
    assert isinstance(backend, OpenAIBackend) and backend.model_id == "openai:http://127.0.0.1:9/v1:teacher"


def test_vllm_backend_says_what_is_missing(monkeypatch):
    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(BackendError, match="needs vllm"):
        VllmBackend("some-model")


def test_a_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="no such folder"):
        TransformersBackend(str(tmp_path / "nope"))


SAMPLING = GenerationConfig(max_new_tokens=12, temperature=0.8, seed=7)


def test_k_samples_of_one_prompt_differ_and_each_is_reproducible(tiny_model):
    """Defect: the transformers backend seeded torch alike before every batch and ignored `Request.sample`, so the
    filter strategy's k "sampled" answers were token-identical."""
    backend = TransformersBackend(str(tiny_model), dtype="float32", batch_size=4)
    ask = Request.chat(ask_chat("Describe a viewer who loves Heat (1995)."))
    other = Request.chat(ask_chat("Describe a viewer who hates Cats (2019)."))
    samples = [Request(ask.messages, sample=k) for k in range(4)]
    first = [g.text for g in backend.generate(samples, SAMPLING)]
    assert len(set(first)) == 4
    # the same request draws the same tokens whatever else runs, before it or beside it in its batch
    backend.generate([other], SAMPLING)
    again = [g.text for g in backend.generate([other, *reversed(samples)], SAMPLING)][1:]
    assert again == list(reversed(first))
    alone = backend.generate([samples[2]], SAMPLING)[0].text
    assert alone == first[2]
    # greedy stays greedy: the sample index changes nothing at temperature 0
    greedy = {g.text for g in backend.generate(samples, GEN)}
    assert len(greedy) == 1


def test_adapters_are_identified_by_content_not_by_folder_name(tiny_model, adapters, tmp_path):
    """Defect: an adapter was named by its folder's basename, so a retrained adapter under the same name replayed
    the old one's cached answers."""
    import shutil

    from safetensors.torch import load_file, save_file

    retrained = tmp_path / "retrained" / "actor"
    shutil.copytree(adapters["actor"], retrained)
    weights = retrained / "adapter_model.safetensors"
    tensors = {name: value + 0.5 for name, value in load_file(weights).items()}
    save_file(tensors, weights)
    old = TransformersBackend(str(tiny_model), dtype="float32", adapters={"actor": adapters["actor"]})
    new = TransformersBackend(str(tiny_model), dtype="float32", adapters={"actor": retrained})
    copy = tmp_path / "copy" / "actor"
    shutil.copytree(adapters["actor"], copy)
    same = TransformersBackend(str(tiny_model), dtype="float32", adapters={"actor": copy})
    assert old.model_id != new.model_id
    assert old.model_id == same.model_id  # the same bytes elsewhere are the same adapter


def test_a_local_model_is_identified_by_content(tiny_model, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere" / tiny_model.name
    shutil.copytree(tiny_model, moved)
    assert TransformersBackend(str(moved), dtype="float32").model_id == TransformersBackend(
        str(tiny_model), dtype="float32"
    ).model_id
    config = moved / "generation_config.json"
    config.write_text(config.read_text().replace("}", ', "note": "changed"}', 1))
    assert TransformersBackend(str(moved), dtype="float32").model_id != TransformersBackend(
        str(tiny_model), dtype="float32"
    ).model_id


@pytest.mark.parametrize("top_p", [0.0, 1e-9, -1.0])
def test_a_vanishing_top_p_keeps_the_top_token(top_p):
    import torch

    from r4ec.knowledge.sampling import PerRequestSampler

    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    noisy = PerRequestSampler([1, 2, 3], temperature=0.8, top_p=top_p)(torch.zeros(3, 1, dtype=torch.long), scores)
    assert noisy.argmax(dim=-1).tolist() == scores.argmax(dim=-1).tolist()


def test_an_openai_run_names_its_server_and_its_remote_adapters(tmp_path):
    from r4ec.knowledge.job import manifest

    settings = Settings(knowledge={"backend": "openai", "model": "teacher", "openai_base_url": "http://127.0.0.1:9/v1",
                                   "actor_adapter": tmp_path / "not-here" / "actor"})  # fmt: skip
    wanted = manifest(settings, "user", "sha256:inputs", 1)
    assert wanted["server"] == "http://127.0.0.1:9/v1" and wanted["model"] == "teacher"
    assert wanted["actor_adapter"].endswith("not-here/actor")  # held by the server: named, not hashed


def test_auto_dtype_follows_the_cpu_it_runs_on(tiny_model):
    """bfloat16 only where the cores have native bf16 (on AVX2-only cores a bf16 matmul ran 130x slower)."""
    import torch

    from r4ec.local_models import cpu_flags, resolve_dtype

    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    expected = "bfloat16" if native else "float32"
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("float16", "cpu") == "float16"  # a dtype asked for is a dtype given
    backend = TransformersBackend(str(tiny_model), dtype="auto")
    assert backend.model.dtype == getattr(torch, expected) and backend.model_id.endswith(f":{expected}")


def test_another_reflector_model_judges_and_is_named_in_the_rows(tiny_model, tmp_path):
    """--reflector-model: reflect steps go to the reflector's backend, reason and refine to the actor's."""
    from r4ec.knowledge.job import worker_backend

    judge = tmp_path / "judge"
    shutil.copytree(tiny_model, judge)
    (judge / "generation_config.json").write_text('{"note": "another model"}')  # other files: another identity
    settings = Settings(
        data_dir=tmp_path,
        knowledge={"backend": "transformers", "model": str(tiny_model), "reflector_model": str(judge),
                   "dtype": "float32", "max_new_tokens": 6, "prefill": False},
    )  # fmt: skip
    actor = worker_backend(settings, 1, "actor", None)
    reflector = worker_backend(settings, 1, "reflector", None)
    assert actor.model_id != reflector.model_id and "judge@sha256:" in reflector.model_id
    judging: dict[str, list[bool]] = {"actor": [], "reflector": []}  # per request: is it a reflect step?
    for name, backend in (("actor", actor), ("reflector", reflector)):
        generate = backend.generate
        backend.generate = lambda requests, config, on_result=None, name=name, generate=generate: (
            judging[name].extend("<judgement>" in r.messages[-1][1] for r in requests)
            or generate(requests, config, on_result)
        )
    user = {"user_id": "1", "history": [{"item_id": "1", "title": "Heat", "category": "Action", "rating": 4.0}]}
    run_loop(actor, [user], loop_config(settings, "user"), reflector)
    assert judging["reflector"] and all(judging["reflector"])
    assert judging["actor"] and not any(judging["actor"])


@pytest.mark.parametrize(("token", "choices", "expected"), [
    ("yes", ("yes", "no"), "yes"), (" Yes", ("yes", "no"), "yes"), ("Y", ("yes", "no"), "yes"), ("No", ("yes", "no"), "no"),
    (" ", ("yes", "no"), None), ("maybe", ("yes", "no"), None), ("reason", ("reasonable", "not reasonable"), "reasonable"),
    ("Not", ("reasonable", "not reasonable"), "not reasonable"), ("no", ("no", "not reasonable"), None),
])  # fmt: skip
def test_a_next_token_counts_for_the_one_choice_it_begins(token, choices, expected):
    assert starts_choice(token, choices) == expected  # a token that begins two choices counts for neither


def test_choices_are_scored_from_the_next_token_distribution_alone_or_padded_in_a_batch(tiny_model):
    """The random model's own likeliest next tokens as the choices, so that they get probability; the short prompt
    is left-padded in the batch and must score as it does alone."""
    import torch

    backend = TransformersBackend(str(tiny_model), dtype="float32", batch_size=2)
    short, long = [Request.chat([{"role": "user", "content": text}]) for text in (
        "Will they like it?", "They rated ten comedies five stars and every drama one star. Will they like a comedy?")]  # fmt: skip
    ids = backend.tokenizer(backend._prompt(short, "<prediction>"), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.inference_mode():
        top = torch.softmax(backend.model(ids).logits[0, -1].float(), dim=-1).topk(20)  # what a server reports
    words = list(dict.fromkeys(w for w in (backend.tokenizer.decode([i]).strip().lower() for i in top.indices.tolist()) if w))
    choices = next((a, b) for a in words for b in words if a != b and not a.startswith(b) and not b.startswith(a))
    begun = [starts_choice(backend.tokenizer.decode([i]), choices) for i in top.indices.tolist()]
    first, second = (sum(p for p, c in zip(top.values.tolist(), begun) if c == wanted) for wanted in choices)

    together = backend.generate([short, long], GenerationConfig(prefix="<prediction>", choices=choices))

    probabilities = json.loads(together[0].text)
    assert list(probabilities) == list(choices) and sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert probabilities[choices[0]] == pytest.approx(first / (first + second), abs=1e-4)  # padded as alone
    assert together[0].tokens_out == 0 and together[0].tokens_in == ids.shape[1]
    assert parse_choice_reply(together[0].text, choices[1]) == probabilities[choices[1]]
    assert parse_choice_reply("not json", "yes") is None and parse_choice_reply('{"yes": null}', "yes") is None


def test_a_request_is_cached_by_the_base_and_its_own_adapter_only(tiny_model, adapters, tmp_path):
    """Defect: the cache keyed every request on all the adapters a backend held, so the base arm of an evaluation on
    a server holding the tuned pair missed the answers the same base requests had on a plain server (25 minutes)."""
    from safetensors.torch import load_file, save_file

    from r4ec.knowledge.cache import AnswerCache, CachedBackend

    ask = ask_chat("Describe a viewer who loves Heat (1995).")
    plain = TransformersBackend(str(tiny_model), dtype="float32")
    paired = TransformersBackend(str(tiny_model), dtype="float32", adapters=adapters)
    base_answer = plain.generate([Request.chat(ask)], GEN)[0].text
    assert paired.generate([Request.chat(ask)], GEN)[0].text == base_answer  # what makes sharing them right

    cache = AnswerCache(tmp_path / "answers.sqlite")
    CachedBackend(plain, cache).generate([Request.chat(ask)], GEN)
    actor_only = CachedBackend(
        TransformersBackend(str(tiny_model), dtype="float32", adapters={"actor": adapters["actor"]}), cache
    )
    actor_answer = actor_only.generate([Request.chat(ask, "actor")], GEN)[0].text
    assert actor_only.calls == 1

    retrained = tmp_path / "retrained"
    shutil.copytree(adapters["reflector"], retrained)
    weights = retrained / "adapter_model.safetensors"
    save_file({name: value + 0.5 for name, value in load_file(weights).items()}, weights)
    cached = CachedBackend(TransformersBackend(str(tiny_model), dtype="float32",
                                               adapters={"actor": adapters["actor"], "reflector": retrained}), cache)  # fmt: skip
    again = cached.generate([Request.chat(ask), Request.chat(ask, "actor")], GEN)
    assert cached.calls == 0 and [g.text for g in again] == [base_answer, actor_answer]
    cached.generate([Request.chat(ask, "reflector")], GEN)
    assert cached.calls == 1  # the retrained reflector's answers are its own
    assert cached.answered_by("reflector") != paired.answered_by("reflector")
