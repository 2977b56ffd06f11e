"""The study (`benchmarks/run_all.py`, r4ec/study.py): its commands, and the real thing end to end on a sample of
real ml-100k with the one-layer Llama: the results page from what the runs recorded, a second run on a fresh data dir
that continues from the archive and redoes nothing, a run without adapters that says why its tuned row is missing, and a failing step that stops the study."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r4ec import layout, study
from r4ec.config import Settings
from r4ec.layout import STUDY_JOURNAL
from r4ec.study import BENCHMARKS, INTERRUPTED, Study, plan

REPO = Path(__file__).resolve().parent.parent


def fake_adapters(settings: Settings) -> None:
    for role in ("actor", "reflector"):
        folder = layout.adapter_dir(settings, role) / "adapter"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")


def test_the_plan_runs_every_stage_with_the_same_settings_and_sample(tmp_path):
    settings = Settings(data_dir=tmp_path)
    study = Study(("--data-dir", str(tmp_path)), ("iterative", "iterative-tuned"), ("lr", "din"), (1, 2), limit=5,
                  benchmarks=(), tune=False)
    without = plan(study, settings)
    assert [c[:2] for c in without.commands] == [["data", "load"], ["marts", "build"], ["knowledge", "generate"],
                                                 ["knowledge", "encode"], ["features", "apply"], ["train", "--backbone"],
                                                 ["report", "--data-dir"]]  # fmt: skip
    assert all(c[-2:] == ["--data-dir", str(tmp_path)] for c in without.commands)
    assert without.commands[2][2:6] == ["--strategy", "iterative", "--limit", "5"]
    train = without.commands[5]
    assert train[:11] == ["train", "--backbone", "lr", "din", "--knowledge", "none", "iterative", "--seeds", "1", "2",
                          "--limit"]  # fmt: skip
    assert "no adapter at" in without.skipped["iterative-tuned"]

    fake_adapters(settings)
    tuned = plan(study, settings)
    assert not tuned.skipped and [c[:2] for c in tuned.commands[7:]] == [["knowledge", "generate"], ["knowledge", "encode"],
                                                                         ["features", "apply"], ["train", "--backbone"], ["report", "--data-dir"]]  # fmt: skip
    assert tuned.commands[-2][4:7] == ["--knowledge", "none", "iterative-tuned"]  # each run's rows once it is done
    generate = tuned.commands[7]
    assert generate[:3] == ["knowledge", "generate", "--strategy"] and "--actor-adapter" in generate
    assert generate[generate.index("--reflector-adapter") + 1].endswith("reflector/adapter")
    tuning = plan(Study(("--data-dir", str(tmp_path)), ("iterative-tuned",), benchmarks=()), Settings(data_dir=tmp_path / "new"))
    assert not tuning.skipped  # the study makes the adapters, then the run
    assert [c[:2] for c in tuning.commands[2:10]] == [["models", "fetch"], ["tuning", "build-data"], ["tuning", "train"],
                                                     ["tuning", "train"], ["tuning", "evaluate"], ["models", "fetch"],
                                                     ["tuning", "evaluate"], ["knowledge", "generate"]]  # fmt: skip
    assert tuning.commands[8][2:4] == ["--reflector-model", "qwen2.5-coder-0.5b-instruct"]
    assert all(c[c.index("--data-dir") + 1] == str(tmp_path) for c in tuning.commands)
    assert [c[c.index("--role") + 1] for c in tuning.commands[4:6]] == ["actor", "reflector"]
    rounds = plan(Study(("--data-dir", str(tmp_path)), ("iterative-r2",), benchmarks=()), settings).commands[2]
    assert rounds[:5] == ["knowledge", "generate", "--strategy", "iterative", "--rounds"] and rounds[5] == "2"
    assert plan(Study(), settings).commands[-len(BENCHMARKS):] == [["benchmark", name] for name in BENCHMARKS]  # last


def test_the_plan_encodes_a_run_with_a_second_encoder_and_trains_its_own_rows(tmp_path):
    """Table 4: iterative's knowledge by all-mpnet-base-v2, fetched from its wheels, encoded and trained as its run."""
    settings = Settings(data_dir=tmp_path)
    study = Study(("--data-dir", str(tmp_path)), ("iterative-enc-allmpnetbasev2", "iterative-enc-bgem3"), ("din",), (1,),
                  benchmarks=())  # fmt: skip
    made = plan(study, settings)
    mpnet = str(settings.models_dir / "all-mpnet-base-v2")
    assert [c[:3] for c in made.commands[2:5]] == [["models", "fetch", "all-mpnet-base-v2"],
                                                   ["knowledge", "generate", "--strategy"], ["knowledge", "encode", "--strategy"]]  # fmt: skip
    assert "--encoder" not in made.commands[3]  # the knowledge is iterative's own
    encode, train = made.commands[4], made.commands[6]
    assert encode[encode.index("--encoder") + 1] == train[train.index("--encoder") + 1] == mpnet
    assert train[train.index("--knowledge") + 1 : train.index("--seeds")] == ["none", "iterative"]
    assert "no local encoder is named bgem3" in made.skipped["iterative-enc-bgem3"]


def test_a_long_command_is_saved_from_while_it_runs(monkeypatch):
    """A machine may go in the middle of a three-hour command: the archive is saved every SAVE_EVERY_S meanwhile."""
    monkeypatch.setattr(study, "SAVE_EVERY_S", 0.05)
    saves = []
    assert study._run_command(["knowledge", "generate", "--help"], lambda: saves.append(time.monotonic())) == 0
    assert len(saves) >= 2  # the r4ec command takes seconds to start


def rows_of(page: str, heading: str, start: str) -> list[str]:
    """The table rows starting with `start` in the page's section under `heading`."""
    section = page.split(heading)[1].split("\n## ")[0]
    return [line for line in section.splitlines() if line.startswith(start)]


def run_all(*args: str) -> subprocess.CompletedProcess:
    script = REPO / "benchmarks" / "run_all.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=REPO)


def test_a_failing_step_stops_the_study_and_the_page_says_so(tmp_path):
    out = tmp_path / "RESULTS.md"
    done = run_all("--data-dir", str(tmp_path), "--dataset", "ml-1m", "--out", str(out))  # ml-1m needs its files
    assert done.returncode == 2
    page = out.read_text()
    assert "**Stopped**: `r4ec data load --data-dir" in page and "exited with 2" in page
    journal = [json.loads(line) for line in (tmp_path / "reports" / "ml-1m" / STUDY_JOURNAL).read_text().splitlines()]
    assert [(e["command"].split()[1:3], e["exit"]) for e in journal] == [(["data", "load"], 2)]


@pytest.mark.integration
def test_an_interrupted_study_journals_the_command_it_stopped(tmp_path, downloads):
    (tmp_path / "downloads").symlink_to(downloads, target_is_directory=True)
    out, journal = tmp_path / "RESULTS.md", tmp_path / "reports" / "ml-100k" / STUDY_JOURNAL
    script = REPO / "benchmarks" / "run_all.py"
    study = subprocess.Popen([sys.executable, str(script), "--data-dir", str(tmp_path), "--out", str(out)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (journal.is_file() and journal.read_text().count("\n") == 1) and time.monotonic() < deadline:
        time.sleep(0.2)  # until `data load` is done and `marts build` (dbt, seconds) has begun
    time.sleep(1)
    study.send_signal(signal.SIGTERM)
    assert study.wait(timeout=120) == 130
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(e["command"].split()[1:3], e["exit"]) for e in entries] == [(["data", "load"], 0), (["marts", "build"], INTERRUPTED)]
    assert "**Interrupted** during `r4ec marts build --data-dir" in out.read_text()


@pytest.mark.integration
def test_the_study_end_to_end_on_a_sample_then_continued_on_a_fresh_data_dir(tmp_path, downloads, tiny_model, monkeypatch):
    """The second run stands for the next machine: a new data dir, the same archive. It generates and trains nothing
    (the restored parts and runs are the first run's, byte for byte) and its page is the first one's, 16 commands on."""
    first_dir, fresh_dir, store = tmp_path / "first", tmp_path / "fresh", tmp_path / "archive"
    for data in (first_dir, fresh_dir):
        data.mkdir()
        (data / "downloads").symlink_to(downloads, target_is_directory=True)
    for name, value in {"BACKEND": "transformers", "MODEL": str(tiny_model), "DTYPE": "float32", "MAX_NEW_TOKENS": "8"}.items():
        monkeypatch.setenv(f"R4EC_KNOWLEDGE__{name}", value)
    out = tmp_path / "results" / "RESULTS.md"
    args = ["--knowledge", "single", "iterative-tuned", "--backbones", "dcn", "--seeds", "1", "--limit", "2",
            "--epochs", "1", "--out", str(out), "--benchmarks", "training_throughput", "--archive", str(store), "--no-tune"]  # fmt: skip
    first = run_all("--data-dir", str(first_dir), *args)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    page = out.read_text()
    assert "| DCN | Base | 1 |" in page and "|  | single (KAR/R2ec), sample 2 [k1] | 1 |" in page
    assert "In progress" not in page and "Stopped" not in page
    assert (out.parent / "table2.png").stat().st_size > 0
    costs = rows_of(page, "## Knowledge runs: what they hold and what they cost", "| single-sample2 |")
    assert [line.split(" | ")[1:3] for line in costs] == [["user", "2"], ["item", "2"]]
    assert "- `iterative-tuned`: not run: no adapter at" in page
    probe = rows_of(page, "## What the knowledge holds on its own", "| single-sample2 |")
    assert len(probe) == 1 and all(0 <= float(auc) <= 1 for auc in probe[0].strip(" |").split(" | ")[-3:])
    assert "r4ec knowledge generate --strategy single --limit 2 --data-dir" in page and "8 commands" in page
    bench = page.split("### training_throughput")[1].split("## Commands")[0]  # the benchmark on the study's data, as it printed it
    assert "| dcn | none | 1 |" in bench and "`python benchmarks/training_throughput.py`" in page

    made = sorted((first_dir / "knowledge" / "ml-100k" / "single-sample2").glob("*_knowledge*/*.parquet"))
    made += sorted((first_dir / "models" / "artifacts" / "ml-100k").glob("*/*.json"))
    assert len(made) >= 2 * 2 + 2 * 3  # user and item parts and vectors; two training runs' config, metrics, vocabulary
    second = run_all("--data-dir", str(fresh_dir), *args)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    # user and item knowledge and vectors, two training runs, journal, probe results, benchmark
    assert "archive: restored 9 folders" in second.stdout
    for path in made:  # nothing generated, encoded or trained again: what the first run made, as it made it
        assert (fresh_dir / path.relative_to(first_dir)).read_bytes() == path.read_bytes(), path
    again = out.read_text()
    assert rows_of(again, "## Knowledge runs: what they hold and what they cost", "| single-sample2 |") == costs
    assert rows_of(again, "## Table 2", "| DCN |") == rows_of(page, "## Table 2", "| DCN |")
    assert not (fresh_dir / "training").exists()  # no training set here: the probe's row is the one kept for its stamp
    assert rows_of(again, "## What the knowledge holds on its own", "| single-sample2 |") == probe
    assert "16 commands" in again and again.split("### training_throughput")[1].split("## Commands")[0] == bench  # measured once


def test_the_page_shows_the_tuned_pair_once_it_is_evaluated(tmp_path):
    settings = Settings(data_dir=tmp_path)
    the_plan = plan(Study(("--data-dir", str(tmp_path)), ("iterative-tuned",), benchmarks=()), settings)
    assert "held-out users" not in study.results_page(Study(), settings, the_plan, [])
    card = {"constructions": 240, "teacher_accuracy": 0.6125, "examples": {"reason": 61, "reflect": 98, "refine": 20},
            "dropped": {"wrong_and_unfixed": 80, "short": 12}, "teacher_auc_p_like": 0.4954}  # fmt: skip
    (layout.sft_dir(settings)).mkdir(parents=True)
    (layout.sft_dir(settings) / "card.json").write_text(json.dumps(card))
    for role, n in (("actor", 81), ("reflector", 98)):
        layout.adapter_dir(settings, role).mkdir(parents=True)
        record = {"examples": n, "valid": 4, "epochs": [{"valid_loss": 1.9}, {"valid_loss": 1.5}], "seconds": 1234.5, "tokens_per_second": 210.0}
        (layout.adapter_dir(settings, role) / "training.json").write_text(json.dumps(record))
    layout.evaluation_dir(settings, "user").mkdir(parents=True)
    (layout.evaluation_dir(settings, "user") / "evaluation.md").write_text("| arm | (a) actor accuracy |\n| base | 0.570 |\n")

    page = study.results_page(Study(), settings, the_plan, [])

    section = page.split("## The actor and the reflector on held-out users")[1].split("\n## ")[0]
    assert "240 constructions, teacher accuracy 0.613, AUC of its P(yes) for a like 0.495; kept reason 61, reflect 98, refine 20; dropped short 12, wrong_and_unfixed 80." in section
    assert "- actor: LoRA on 77 examples, 2 epochs, valid loss 1.5000 on the 4 held out, 1,234 s (210 tokens/s)" in section
    assert "- reflector: LoRA on 94 examples" in section and "| base | 0.570 |" in section
    larger = layout.evaluation_dir(settings, "user", "qwen2.5-coder-0.5b-instruct")
    larger.mkdir()
    (larger / "evaluation.md").write_text("| arm | (b) verdicts |\n| reflector qwen2.5-coder-0.5b-instruct | 97.0% |\n")
    page = study.results_page(Study(), settings, the_plan, [])
    assert "### The reflector's size: qwen2.5-coder-0.5b-instruct judging the base actor's answers (Fig. 3)" in page
    assert "| reflector qwen2.5-coder-0.5b-instruct | 97.0% |" in page


def test_the_journal_names_code_changes_not_the_studys_own_outputs(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "benchmarks" / "archive").mkdir(parents=True)
    (tmp_path / "r4ec.py").write_text("code\n")
    (tmp_path / "benchmarks" / "archive" / "journal.jsonl").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    assert not study.commit(tmp_path).endswith("+changes")
    (tmp_path / "benchmarks" / "archive" / "journal.jsonl").write_text("{}\n{}\n")  # a save after a command
    assert not study.commit(tmp_path).endswith("+changes")
    (tmp_path / "r4ec.py").write_text("other code\n")
    assert study.commit(tmp_path).endswith("+changes")


def knowledge_part(folder: Path, llm_calls: int, seconds: float, replies: bool = True) -> None:
    """A knowledge part of two entities, each answered by one reply (generated now, or read from the answer cache),
    or by none (`text`: the prompt inputs as they are)."""
    said = [{"step": "reason", "reply": "<preference>x</preference>"}] if replies else []
    row = {"strategy": "single", "judgements": [], "rounds_used": 0, "parse_failures": [], "quality": "parsed",
           "kept_answers": [], "replies": said, "tokens_in": 300 * replies, "tokens_out": 60 * replies,
           "llm_calls": llm_calls, "generated_tokens": 60 * llm_calls,
           "prompt_tokens_computed": 300 * llm_calls, "replies_cut": 0, "part": 0, "part_seconds": seconds,
           "generated_at": "2026-12-07T00:00:00+00:00"}  # fmt: skip
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row, row]), folder / "part-00000.parquet")


def test_the_cost_of_a_run_rebuilt_from_cached_answers_is_its_replies_not_a_time_it_did_not_take(tmp_path):
    settings = Settings(data_dir=tmp_path)
    for entity, calls, seconds in (("user", 1, 20.0), ("item", 0, 0.02)):  # item: every answer from the cache
        knowledge_part(layout.knowledge_dir(settings, entity, layout.KnowledgeRun.named("single")), calls, seconds)
    knowledge_part(layout.knowledge_dir(settings, "user", layout.KnowledgeRun.named("text")), 0, 3.0, replies=False)
    single_items = layout.knowledge_dir(settings, "item", layout.KnowledgeRun.named("single"))
    (single_items / layout.MANIFEST).write_text(json.dumps({"parts": 3}))  # still being generated: 1 part of 3

    lines = study.knowledge_costs(settings, Study(knowledge=("single", "text")))

    user, item = (line.split(" | ") for line in lines if line.startswith("| single |"))
    text, text_items = (line.split(" | ") for line in lines if line.startswith("| text |"))
    assert user[2] == "2" and item[2] == "2 (1 of 3 parts so far)"
    assert text_items[2] == "none yet (0 of ? parts)" and len(text_items) == len(user)
    columns = [c.strip(" |") for c in lines[2].split(" | ")]
    cell = lambda row, name: row[columns.index(name)]  # noqa: E731
    assert cell(user, "LLM replies (generated now)") == "2 (2)" and cell(item, "LLM replies (generated now)") == "2 (0)"
    assert cell(user, "tokens out (generated now)") == "120 (120)" and cell(item, "tokens out (generated now)") == "120 (0)"
    assert cell(user, "part-seconds") == "20" and cell(item, "part-seconds") == ""  # a part's time, once; not 0: it took none
    assert user[-1] == "1,000, 60,000, 10,000 |" and item[-1] == "n/a |"
    assert cell(text, "part-seconds") == "3" and text[-1] == "0, 0, 1,500 |"  # no LLM at all: its own time is its cost
