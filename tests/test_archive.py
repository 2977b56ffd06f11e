"""The archive (r4ec/archive.py): what took hours to make, saved outside the data dir and restored on a fresh one.
The end-to-end case (a study continued in a fresh data dir without generating or training anything again) is in
test_study."""

from __future__ import annotations

from pathlib import Path

from r4ec import archive
from r4ec.config import Settings
from r4ec.knowledge.backends import Generation
from r4ec.knowledge.cache import AnswerCache

RUN = Path("knowledge/ml-100k/iterative/user_knowledge")
TRAINED = Path("models/artifacts/ml-100k/din-iterative-attention-seed1")
ADAPTER = Path("tuning/ml-100k/adapters/actor")
VECTORS = Path("knowledge/ml-100k/iterative-enc-allmpnetbasev2/item_knowledge_vectors-allmpnetbasev2")


def data_dir(root: Path) -> Settings:
    """A data dir with one of each kind of output, finished or not, kept or not."""
    files = {
        RUN / "_manifest.json": '{"inputs": "a"}', RUN / "part-00000.parquet": "part 0", RUN / "part-00001.parquet": "part 1",
        RUN / "part-00002.parquet.partial": "a part being written",
        Path("knowledge/ml-100k/iterative/user_knowledge_vectors/part-00000.parquet"): "vectors being encoded: not kept",
        VECTORS / "part-00000.parquet": "vectors", VECTORS / "_COMPLETE.json": "{}",
        TRAINED / "config.json": "{}", TRAINED / "model.pt": "weights: not kept", TRAINED / "metrics.json": "{}",
        TRAINED / "predictions.parquet": "test predictions",
        Path("models/artifacts/ml-100k/dcn-none-none-seed1/config.json"): "{} (killed while training: no metrics)",
        ADAPTER / "training.json": "{}", ADAPTER / "adapter/adapter_config.json": "{}",
        ADAPTER / "adapter/adapter_model.safetensors": "lora", ADAPTER / "checkpoint/state.pt": "resume state",
        Path("reports/ml-100k/study-journal.jsonl"): '{"command": "r4ec data load"}\n',
        Path("reports/ml-100k/table2.md"): "rewritten by r4ec report",
        Path("reports/ml-100k/probe/iterative/result.json"): '{"key": {}, "result": {}}',
    }  # fmt: skip
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return Settings(data_dir=root)


def answer(settings: Settings, key: str, text: str) -> None:
    cache = AnswerCache(settings.answer_cache_path)
    cache.put_many({key: Generation(text, 10, 5)})
    cache.store.close()


def answers(settings: Settings, *keys: str) -> dict[str, str]:
    cache = AnswerCache(settings.answer_cache_path)
    found = {key: g.text for key, g in cache.get_many(list(keys)).items()}
    cache.store.close()
    return found


def test_a_fresh_data_dir_gets_back_the_finished_outputs_and_the_answers(tmp_path):
    old, store = data_dir(tmp_path / "old"), tmp_path / "archive"
    answer(old, "k1", "first answer")
    answer(old, "k2", "second answer")

    saved = archive.save(old, store)

    kept = {str(RUN / "_manifest.json"), str(RUN / "part-00000.parquet"), str(RUN / "part-00001.parquet"),
            str(TRAINED / "config.json"), str(TRAINED / "predictions.parquet"), str(TRAINED / "metrics.json"),
            str(ADAPTER / "training.json"), str(ADAPTER / "adapter/adapter_config.json"),
            str(ADAPTER / "adapter/adapter_model.safetensors"), "reports/ml-100k/study-journal.jsonl",
            str(VECTORS / "part-00000.parquet"), str(VECTORS / "_COMPLETE.json"), "reports/ml-100k/probe/iterative/result.json"}  # fmt: skip
    assert {str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() and "cache" not in p.parts} == kept
    assert (saved.folders, saved.files, saved.answers) == (6, 13, 2)

    new = Settings(data_dir=tmp_path / "new")
    restored = archive.restore(new, store)

    assert (restored.folders, restored.files, restored.answers, restored.skipped) == (6, 13, 2, 0)
    for name in kept:
        assert (new.data_dir / name).read_bytes() == (old.data_dir / name).read_bytes()
    assert answers(new, "k1", "k2") == {"k1": "first answer", "k2": "second answer"}
    assert not list(new.data_dir.rglob("*.archiving"))
    again = archive.restore(new, store)  # restoring twice changes nothing
    assert (again.folders, again.answers, again.skipped) == (0, 0, 6)


def test_saving_again_mirrors_changed_folders_and_adds_only_the_new_answers(tmp_path):
    settings, store = data_dir(tmp_path / "data"), tmp_path / "archive"
    answer(settings, "k1", "first answer")
    archive.save(settings, store)
    unchanged = archive.save(settings, store)
    assert (unchanged.folders, unchanged.files, unchanged.removed, unchanged.answers) == (0, 0, 0, 0)

    root = settings.data_dir
    (root / RUN / "part-00001.parquet").unlink()  # a run regenerated with other settings (--overwrite)
    (root / RUN / "_manifest.json").write_text('{"inputs": "b"}')
    (root / "reports/ml-100k/study-journal.jsonl").write_text('{"command": "r4ec data load"}\n{"command": "r4ec marts build"}\n')
    for path in (root / TRAINED).iterdir():  # a training run deleted here stays archived: absent is not deleted
        path.unlink()
    answer(settings, "k2", "second answer")

    moved = archive.save(settings, store)

    assert (moved.folders, moved.files, moved.removed, moved.answers) == (2, 2, 1, 1)
    assert not (store / RUN / "part-00001.parquet").exists() and (store / RUN / "_manifest.json").read_text() == '{"inputs": "b"}'
    assert (store / TRAINED / "metrics.json").is_file()
    assert len(list((store / archive.ANSWERS).glob("*.parquet"))) == 2  # one segment per save that added answers


def test_a_restore_never_mixes_an_archived_folder_into_a_local_one(tmp_path):
    old, store = data_dir(tmp_path / "old"), tmp_path / "archive"
    answer(old, "k1", "archived answer")
    archive.save(old, store)
    new = Settings(data_dir=tmp_path / "new")
    (new.data_dir / RUN).mkdir(parents=True)
    (new.data_dir / RUN / "_manifest.json").write_text('{"inputs": "another run"}')
    answer(new, "k1", "local answer")

    restored = archive.restore(new, store)

    assert sorted(p.name for p in (new.data_dir / RUN).iterdir()) == ["_manifest.json"]
    assert (new.data_dir / RUN / "_manifest.json").read_text() == '{"inputs": "another run"}'
    assert (restored.folders, restored.skipped) == (5, 1)
    assert answers(new, "k1") == {"k1": "local answer"}


def test_a_copy_cut_short_is_never_restored_and_the_next_save_removes_it(tmp_path):
    settings, store = data_dir(tmp_path / "data"), tmp_path / "archive"
    archive.save(settings, store)
    cut = store / TRAINED / ("predictions.parquet" + archive.PARTIAL)  # a save killed while copying a run's files
    cut.write_text("half the predictions")

    new = Settings(data_dir=tmp_path / "new")
    archive.restore(new, store)
    assert not list(new.data_dir.rglob("*" + archive.PARTIAL))

    moved = archive.save(settings, store)
    assert not cut.exists() and moved.removed == 1
    assert (store / TRAINED / "predictions.parquet").read_text() == "test predictions"


def test_a_probe_result_made_here_never_hides_another_runs_archived_one(tmp_path):
    old, store = data_dir(tmp_path / "old"), tmp_path / "archive"
    archive.save(old, store)
    new = Settings(data_dir=tmp_path / "new")
    made_here = new.data_dir / "reports/ml-100k/probe/text/result.json"  # a report ran here before the restore
    made_here.parent.mkdir(parents=True)
    made_here.write_text('{"key": {}, "result": {}}')

    archive.restore(new, store)
    archive.save(new, store)

    assert (new.data_dir / "reports/ml-100k/probe/iterative/result.json").is_file()
    assert {p.parent.name for p in (store / "reports/ml-100k/probe").glob("*/result.json")} == {"iterative", "text"}
