"""`r4ec tuning evaluate`: the base and the tuned actor and reflector side by side on the held-out users.

Both arms run the same protocol on the same samples (held-out users, several training-period targets each; for
items, items with a held-out user as the target, a few per user): the actor
answers with the target shown and predicts like / dislike in a turn of its own; the reflector judges the answer with
the inference prompt, as the tuned one was trained; every answer it rejects is refined and predicted again. The
tuned arm asks the same server through the actor's and the reflector's adapters. Per arm:
  (a) the actor's accuracy on its first prediction, beside the share it predicted "like" and the share of samples
      liked (the accuracy of always answering "like"), and the median length of its answers in words;
  (b) the reflector's share of answers with a verdict, and the AUC of "not reasonable" as a detector of a wrong
      prediction (0.5: no better than chance);
  (a, b) scored: the probability of "yes" as the first prediction's first word, and of "reasonable" as the verdict's
      (the models' next-token distributions, `GenerationConfig.choices`), so that each can be ranked: the AUC of
      P(yes) for a like, and of P(not reasonable) for a wrong prediction. A model that always says "yes" can still
      rank the samples it is surer of first; the counted figures cannot show that;
  (c) refinements that turn a wrong prediction right, and a right one wrong.
With `--reflector-model` the second arm is not the tuned pair but the base actor with another model judging its
answers (and scoring its verdicts): the reflector's size, the paper's Fig. 3, read off (b) rather than Table 2.
Intervals are 95 % from a seeded bootstrap over users (a user's targets are resampled together). Every sample's
outcome is written beside the summary, so any figure can be recomputed.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from r4ec import fingerprint, layout
from r4ec.config import Settings
from r4ec.knowledge import KnowledgeError
from r4ec.knowledge.job import pipelines, serving_engines, worker_backend
from r4ec.knowledge.progress import PartProgress
from r4ec.knowledge.prompts import CONSTRUCTION_VERSION
from r4ec.local_models import adapter_identity, is_adapter
from r4ec.tuning.construction import Construction, Sample, construct
from r4ec.tuning.job import teacher_config
from r4ec.tuning.ranking import auc
from r4ec.tuning.samples import held_out_samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    """Who answers in an arm: the adapters on the actor's model (their names; None: the base model), and whose
    model judges (worker_backend's role: "reflector" for another model, `--reflector-model`)."""

    actor_adapter: str | None = None
    reflector_adapter: str | None = None
    judge: str = "actor"


TUNED_PAIR = {"base": Arm(), "tuned": Arm("actor", "reflector")}
SCORES = ("accuracy", "verdict_share", "auc_rejection_wrong", "auc_p_like", "auc_p_rejection_wrong")  # with intervals


def outcome(c: Construction) -> dict:
    """One sample's figures: what each metric is computed from."""
    label = bool(c.sample.label)
    return {
        "sample_id": c.sample.sample_id, "user_id": user_of(c.sample), "label": c.sample.label,
        "answer_words": len(c.answer.split()) if c.answer else 0,
        "prediction": c.prediction, "verdict": None if c.reasonable is None else ("reasonable" if c.reasonable else "not reasonable"),
        "refined_prediction": c.refined_prediction, "p_like": c.p_like, "p_reasonable": c.p_reasonable,
        "correct": None if c.prediction is None else c.prediction == label,
        "refined_correct": None if c.refined_prediction is None else c.refined_prediction == label,
        "llm_calls": c.chain.llm_calls,
    }  # fmt: skip


def user_of(sample: Sample) -> str:
    """The held-out user a sample is about: the user, or an item's target user (the unit of the bootstrap)."""
    return sample.inputs["user_id"] if sample.entity == "user" else sample.target["user_id"]


def metrics(rows: list[dict]) -> dict:
    predicted = [r for r in rows if r["correct"] is not None]
    judged = [r for r in predicted if r["verdict"] is not None]
    refined = [r for r in judged if r["refined_correct"] is not None]
    scored_like = [r for r in predicted if r.get("p_like") is not None]
    scored_verdict = [r for r in predicted if r.get("p_reasonable") is not None]
    return {
        "samples": len(rows),
        "predicted": len(predicted),
        "accuracy": _share(predicted, lambda r: r["correct"]),
        "predicted_like": _share(predicted, lambda r: r["prediction"]),
        "liked": _share(predicted, lambda r: r["label"] == 1),
        "answer_words": statistics.median(r["answer_words"] for r in rows) if rows else None,
        "verdict_share": len(judged) / len(predicted) if predicted else None,
        "rejected": sum(r["verdict"] == "not reasonable" for r in judged),
        "auc_rejection_wrong": auc([r["verdict"] == "not reasonable" for r in judged], [not r["correct"] for r in judged]),
        "auc_p_like": auc([r["p_like"] for r in scored_like], [r["label"] == 1 for r in scored_like]),
        "auc_p_rejection_wrong": auc([1 - r["p_reasonable"] for r in scored_verdict], [not r["correct"] for r in scored_verdict]),
        "refined": len(refined),
        "wrong_to_right": sum(not r["correct"] and r["refined_correct"] for r in refined),
        "right_to_wrong": sum(r["correct"] and not r["refined_correct"] for r in refined),
        "llm_calls": sum(r["llm_calls"] for r in rows),
    }


def _share(rows: list[dict], test) -> float | None:
    return sum(bool(test(r)) for r in rows) / len(rows) if rows else None


def bootstrap(by_arm: dict[str, list[dict]], name: str, draws: int, seed: int) -> dict[str, tuple[float, float]]:
    """95 % intervals of a metric per arm and of the second arm - the first (base), resampling users (paired: the same
    users each draw)."""
    base, other = by_arm
    users = sorted({r["user_id"] for r in by_arm[base]})
    per_user = {arm: {u: [r for r in rows if r["user_id"] == u] for u in users} for arm, rows in by_arm.items()}
    rng, values = random.Random(seed), {arm: [] for arm in [*by_arm, "difference"]}
    for _ in range(draws):
        chosen = [rng.choice(users) for _ in users]
        drawn = {arm: metrics([r for u in chosen for r in per_user[arm][u]])[name] for arm in by_arm}
        for arm, value in drawn.items():
            if value is not None:
                values[arm].append(value)
        if drawn.get(base) is not None and drawn.get(other) is not None:
            values["difference"].append(drawn[other] - drawn[base])
    return {arm: _interval(v) for arm, v in values.items() if v}


def _interval(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[int(0.025 * (len(ordered) - 1))], ordered[int(0.975 * (len(ordered) - 1))]


@dataclass
class EvaluationSummary:
    out_dir: Path
    figures: dict
    seconds: float

    def line(self) -> str:
        arms, intervals = self.figures["arms"], self.figures["intervals"]
        base, other = arms
        low, high = intervals["accuracy"].get("difference", (None, None))
        return (f"held-out evaluation ({self.figures['entity']}): {arms[base]['samples']:,} samples of {self.figures['users']} users; actor "
                f"accuracy {base} {_number(arms[base]['accuracy'])}, {other} {_number(arms[other]['accuracy'])} "
                f"(difference 95% CI {_number(low, '+.3f')}..{_number(high, '+.3f')}); verdicts {base} "
                f"{_number(arms[base]['verdict_share'], '.1%')}, {other} {_number(arms[other]['verdict_share'], '.1%')}; "
                f"{self.seconds:.0f}s -> {self.out_dir}")  # fmt: skip


def _number(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def trained_adapters(settings: Settings) -> Settings:
    """The settings with the adapters `r4ec tuning train` wrote, where none are named."""
    k = settings.knowledge
    chosen = {f"{role}_adapter": getattr(k, f"{role}_adapter") or layout.trained_adapter(settings, role)
              for role in ("actor", "reflector")}  # fmt: skip
    for path in chosen.values():
        if not is_adapter(path):
            raise KnowledgeError(f"{path}: no adapter there: train it (`r4ec tuning train --role ...`) or name one")
    return settings.model_copy(update={"knowledge": k.model_copy(update=chosen)})


def arms(settings: Settings) -> dict[str, Arm]:
    """The base against the tuned pair; or, where another reflector model is named, against that model judging the
    base actor's answers (the reflector's size: the paper's Fig. 3, measured on verdicts rather than Table 2)."""
    k = settings.knowledge
    if k.reflector_model and k.reflector_model != k.model:
        return {"base": Arm(), f"reflector {Path(k.reflector_model).name}": Arm(judge="reflector")}
    return TUNED_PAIR


def evaluate(settings: Settings, per_user: int = 2, draws: int = 1000, entity: str = "user") -> EvaluationSummary:
    """Run both arms on the held-out samples and write evaluation.json, evaluation.md and the per-sample outcomes."""
    chosen = arms(settings)
    if chosen is TUNED_PAIR:
        settings = trained_adapters(settings)
    k = settings.knowledge
    samples = held_out_samples(settings, per_user, entity)
    if not samples:
        raise KnowledgeError("no held-out user has a training-period sample: check --held-out-fraction and the marts")
    started, by_arm = time.perf_counter(), {}
    with serving_engines(settings) as engines:
        backends = {role: worker_backend(settings, None, role, engines.get(role)) for role in ("actor", "reflector")}
        for name, arm in chosen.items():
            # the actors are measured by what they answer: a teacher's like_threshold is no part of them
            cfg = replace(teacher_config(settings), adapter=arm.actor_adapter, reflector_adapter=arm.reflector_adapter,
                          evaluation=True, like_threshold=None)  # fmt: skip
            log.info("evaluation: %s arm on %d held-out samples", name, len(samples))
            with PartProgress(0, len(samples), None, cfg.steps(), k.progress_interval_s) as progress:
                runs = construct(backends["actor"], samples, cfg, progress, pipelines(settings, engines), backends[arm.judge])
            log.info("evaluation: %s arm done: %s", name, progress.line())
            by_arm[name] = [outcome(c) for c in runs]
    figures = {
        "entity": entity,
        "built_from": {"model": backends["actor"].model_id, "reflector_model": backends["reflector"].model_id,
                       "actor_adapter": k.actor_adapter and adapter_identity(k.actor_adapter),
                       "reflector_adapter": k.reflector_adapter and adapter_identity(k.reflector_adapter),
                       "construction_version": CONSTRUCTION_VERSION, "held_out_fraction": settings.tuning.held_out_fraction,
                       "targets_per_user": per_user, "seed": settings.seed,
                       "samples": fingerprint.of_json(sorted(s.sample_id for s in samples))},
        "users": len({user_of(s) for s in samples}),
        "arms": {arm: metrics(rows) for arm, rows in by_arm.items()},
        "intervals": {name: bootstrap(by_arm, name, draws, settings.seed) for name in SCORES},
    }  # fmt: skip
    out_dir = layout.evaluation_dir(settings, entity, None if chosen is TUNED_PAIR else k.reflector_model)
    write(out_dir, figures, by_arm)
    return EvaluationSummary(out_dir, figures, time.perf_counter() - started)


def write(out_dir: Path, figures: dict, by_arm: dict[str, list[dict]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(figures, indent=1, sort_keys=True))
    with (out_dir / "outcomes.jsonl").open("w") as out:
        for arm, rows in by_arm.items():
            out.writelines(json.dumps({"arm": arm, **row}) + "\n" for row in rows)
    (out_dir / "evaluation.md").write_text(markdown(figures))


def markdown(figures: dict) -> str:
    def cell(arm: str, name: str, spec: str = ".3f") -> str:
        value, interval = figures["arms"][arm][name], figures["intervals"].get(name, {}).get(arm)
        if value is None or interval is None:
            return _number(value, spec)
        return f"{value:{spec}} ({interval[0]:{spec}}..{interval[1]:{spec}})"

    lines = [
        f"{figures['entity'].capitalize()} samples of held-out users: {figures['users']} users, "
        f"{figures['arms']['base']['samples']} samples (up to {figures['built_from']['targets_per_user']} training-period "
        "ratings each); 95 % bootstrap intervals over users.",
        "",
        "| arm | (a) actor accuracy | predicted like | liked | (a) AUC of P(yes) for a like | answer words (median) | (b) verdicts | (b) AUC of rejection for a wrong prediction | (b) AUC of P(not reasonable) for a wrong prediction | (c) refined: wrong -> right | right -> wrong | LLM calls |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in figures["arms"]:
        m = figures["arms"][arm]
        lines.append(f"| {arm} | {cell(arm, 'accuracy')} | {cell(arm, 'predicted_like', '.1%')} | {cell(arm, 'liked', '.1%')} | "
                     f"{cell(arm, 'auc_p_like')} | {_number(m['answer_words'], 'g')} | {cell(arm, 'verdict_share', '.1%')} | "
                     f"{cell(arm, 'auc_rejection_wrong')} | {cell(arm, 'auc_p_rejection_wrong')} | {m['wrong_to_right']} of {m['refined']} | "
                     f"{m['right_to_wrong']} of {m['refined']} | {m['llm_calls']:,} |")  # fmt: skip
    low_high = figures["intervals"]["accuracy"].get("difference")
    if low_high:
        base, other = figures["arms"]
        lines += ["", f"Accuracy, {other} - {base}: 95 % interval {low_high[0]:+.3f} .. {low_high[1]:+.3f}."]
    return "\n".join(lines) + "\n"
