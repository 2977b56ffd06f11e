"""The paper's Table 2 on our data: test AUC and LogLoss per backbone x knowledge, mean ± std over seeds, and the
relative improvement over the same backbone's Base. Logistic regression on the one-hot fields is the first row:
the floor every backbone's Base must beat. Runs are grouped by the knowledge run they trained on (by content), and
the table names each: the strategy, the sample, the model and adapters by hash, the prompt version, and how much of
each split had knowledge."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from r4ec import layout
from r4ec.config import Settings
from r4ec.layout import KnowledgeRun, run_order
from r4ec.ranking import RankingError
from r4ec.ranking.slices import Slice, long_tails, slice_metrics
from r4ec.ranking.train import BACKBONES

LABELS = {"none": "Base", "text": "text, no LLM", "single": "single (KAR/R2ec)", "iterative": "iterative (R4ec)",
          "filter": "filter"}  # fmt: skip
NAMES = {"lr": "LR", "din": "DIN", "dien": "DIEN", "gru4rec": "GRU4Rec", "autoint": "AutoInt", "fignn": "FiGNN",
         "dcn": "DCN", "deepfm": "DeepFM"}  # fmt: skip


@dataclass
class Row:
    backbone: str
    knowledge: str
    limit: int | None  # knowledge generated for a sample of this many users and items
    connector: str
    knowledge_run: dict | None = None  # r4ec.knowledge.runs.describe() of the run trained on; None for Base
    seeds: list[int] = field(default_factory=list)
    auc: list[float] = field(default_factory=list)
    logloss: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        run = KnowledgeRun.named(self.knowledge) if self.knowledge != "none" else KnowledgeRun("none")
        rounds = f", {run.rounds} rounds" if run.rounds != 1 else ""
        tuned = ", tuned actor and reflector" if run.tuned else ""
        encoder = f", encoder {run.encoder}" if run.encoder else ""
        label = LABELS[run.strategy] + rounds + tuned + encoder + (f", sample {self.limit}" if self.limit else "")
        return label + ("" if self.connector == "mlp" or self.knowledge == "none" else f", {self.connector}")

    def mean(self, metric: str) -> float:
        return statistics.fmean(getattr(self, metric))

    def std(self, metric: str) -> float:
        """Sample standard deviation over seeds; 0 for a single seed."""
        values = getattr(self, metric)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def spread(self, metric: str) -> str:
        mean = f"{self.mean(metric):.4f}"
        return f"{mean} ± {self.std(metric):.4f}" if len(self.seeds) > 1 else mean


def collect(artifacts: Path, test_metrics: Callable[[Path], dict | None] | None = None) -> list[Row]:
    """Every finished run under `artifacts`, grouped by backbone, knowledge and connector, in the table's order.
    `test_metrics(run_dir)` gives a run's figures (default: its saved test metrics); a run it gives None for is left
    out."""
    rows: dict[tuple, Row] = {}
    for metrics_file in sorted(artifacts.glob("*/metrics.json")):
        config = json.loads((metrics_file.parent / "config.json").read_text())
        test = test_metrics(metrics_file.parent) if test_metrics else json.loads(metrics_file.read_text())["test"]
        if test is None:
            continue
        connector = "mlp" if config["backbone"] == "lr" else config["connector"]
        limit = config.get("knowledge_limit") if config["knowledge"] != "none" else None
        run = config.get("knowledge_run")
        key = (config["backbone"], config["knowledge"], limit, connector, run["digest"] if run else None)
        row = rows.setdefault(key, Row(*key[:4], knowledge_run=run))
        row.seeds.append(config["seed"])
        row.auc.append(test["auc"])
        row.logloss.append(test["logloss"])
    order = list(BACKBONES)
    return sorted(
        rows.values(),
        key=lambda r: (order.index(r.backbone), (-1, "") if r.knowledge == "none" else run_order(r.knowledge),
                       r.limit or 0, r.connector != "mlp", r.connector, r.knowledge_run["digest"] if r.knowledge_run else ""),
    )  # fmt: skip


def base_of(rows: list[Row], row: Row) -> Row | None:
    return next((r for r in rows if r.backbone == row.backbone and r.knowledge == "none"), None)


def gap_sigmas(row: Row, base: Row) -> float | None:
    """The mean per-seed AUC gap to `base` over its sample standard deviation (the seeds both rows have; ±inf for
    a gap without spread); None with fewer than two such seeds, or no gap and no spread."""
    base_auc = dict(zip(base.seeds, base.auc))
    gaps = [auc - base_auc[seed] for seed, auc in zip(row.seeds, row.auc) if seed in base_auc]
    if len(gaps) < 2:
        return None
    spread, mean = statistics.stdev(gaps), statistics.fmean(gaps)
    if spread == 0:
        return None if mean == 0 else math.copysign(math.inf, mean)
    return mean / spread


def gap_ratio(row: Row, base: Row) -> str:
    """`+3.1σ` (gap_sigmas), `+inf σ`, or empty."""
    return sigmas_text(gap_sigmas(row, base))


def chance_of_two_sigma(seeds: int, gaps: int, where: str) -> str:
    """What "beyond 2σ" means with this many seeds: the gap over the spread of n per-seed gaps, times √n, is a paired
    t on n − 1 degrees of freedom; with 3 seeds, 2σ is t = 3.46, p = 0.07, so of 42 gaps about 3 lie beyond it by
    chance alone. Said on the page, counted over the gaps the reader scans together, so that no single such gap is
    read as a finding."""
    from scipy.stats import t

    if seeds < 2 or gaps < 1:
        return ""
    p = 2 * t.sf(2 * math.sqrt(seeds), seeds - 1)
    return (f" With {seeds} seeds, ±2σ is a paired t of {2 * math.sqrt(seeds):.2f} on {seeds - 1} degrees of freedom "
            f"(two-sided p = {p:.2f}): of the {gaps} gap{'s' * (gaps != 1)} {where}, about {gaps * p:.1f} lie beyond ±2σ by chance alone "
            f"and at least one does with probability {1 - (1 - p) ** gaps:.0%} (as if the gaps were independent; those "
            "sharing a Base are not quite), with no real difference anywhere.")


def sigmas_text(sigmas: float | None) -> str:
    if sigmas is None:
        return ""
    return f"{'+' if sigmas > 0 else '-'}inf σ" if math.isinf(sigmas) else f"{sigmas:+.1f}σ"


def full_runs(rows: list[Row]) -> list[Row]:
    """The rows the paper's comparisons read: knowledge for every entity (no sample), the MLP connector."""
    return [r for r in rows if r.limit is None and r.connector == "mlp"]


def beyond_two_sigma(sigmas: Iterable[float | None]) -> tuple[int, int]:
    """(ahead, behind): how many gaps exceed twice their seed spread, each way."""
    sigmas = [s for s in sigmas if s is not None]
    return sum(s > 2 for s in sigmas), sum(s < -2 for s in sigmas)


REFERENCE = "iterative"  # the paper's run, which each ablation changes in one respect
ABLATIONS = (("text", "no LLM: the prompt's facts encoded as they are"), ("single", "Fig. 6: no reflect / refine round"),
             ("iterative-r2", "Fig. 6: two rounds"), ("filter", "Fig. 5: k answers judged and filtered, not refined"),
             ("iterative-tuned", "the tuned actor and reflector"))  # fmt: skip


def ablations(rows: list[Row]) -> str:
    """Each variant of the paper's run against it, backbone by backbone (full runs, MLP connector): the mean test AUC
    gap and that gap over its seed spread, so each of the paper's figures reads off one line. Empty when no variant
    and reference share a backbone."""
    full = full_runs(rows)
    reference = {r.backbone: r for r in full if r.knowledge == REFERENCE}
    named = {r.knowledge: KnowledgeRun.named(r.knowledge) for r in full if r.knowledge != "none"}
    encoders = sorted(k for k, run in named.items() if run.encoder and run.encoded_by(None).name == REFERENCE)
    variants = [*ABLATIONS, *((k, f"Table 4: encoder {KnowledgeRun.named(k).encoder}") for k in encoders)]
    backbones = [b for b in BACKBONES if b in reference]
    lines = []
    for knowledge, what in variants:
        found = {r.backbone: r for r in full if r.knowledge == knowledge and r.backbone in reference}
        if not found:
            continue
        gaps = {b: found[b].mean("auc") - reference[b].mean("auc") for b in found}
        sigmas = {b: gap_sigmas(found[b], reference[b]) for b in found}
        cells = [f"{gaps[b]:+.4f} {sigmas_text(sigmas[b])}".strip() if b in found else "" for b in backbones]
        ahead, behind = beyond_two_sigma(sigmas.values())
        lines.append(f"| {LABELS[KnowledgeRun.named(knowledge).strategy]} · {knowledge} | {what} | " + " | ".join(cells)
                     + f" | {statistics.fmean(gaps.values()):+.4f} | {ahead} / {behind} of {len(found)} |")  # fmt: skip
    if not lines:
        return ""
    names = " | ".join(NAMES.get(b, b) for b in backbones)
    return "\n".join([
        "### Ablations: each variant against iterative (R4ec), per backbone",
        "",
        f"| Variant | What it changes | {names} | mean | > 2σ ahead / behind |",
        "|---|---|" + "---:|" * (len(backbones) + 2),
        *lines,
        "",
        "Test AUC of the variant minus iterative's (full runs, MLP connector), mean over seeds, and that gap over the "
        "sample standard deviation of the per-seed gaps (seeds both have; none with fewer than two). Last column: on "
        "how many backbones the variant is ahead of / behind iterative by more than twice its seed spread."
        + chance_of_two_sigma(max((len(r.seeds) for r in reference.values()), default=0), len(backbones), "in a row"),
    ])  # fmt: skip


ORDERING = ("none", "single", "iterative")  # the paper's claim: Base < single (KAR/R2ec) < iterative (R4ec)


def ordering(tables: list[tuple[str, list[Row]]]) -> str:
    """Whether the paper's ordering holds, per table (all test samples, each long tail): on how many backbones the
    three mean test AUCs are in its order, and each of its gaps as the mean over backbones and the backbones where
    it exceeds twice its seed spread, either way. Full runs, MLP connector; empty when no table has all three."""
    lines, seeds, most = [], 0, 0
    for name, rows in tables:
        full = {(r.backbone, r.knowledge): r for r in full_runs(rows)}
        backbones = [b for b in BACKBONES if all((b, k) in full for k in ORDERING)]
        if not backbones:
            continue
        seeds = max(seeds, *(len(full[b, k].seeds) for b in backbones for k in ORDERING))
        most = max(most, len(backbones))
        means = {b: [full[b, k].mean("auc") for k in ORDERING] for b in backbones}
        holds = [b for b in backbones if means[b][0] < means[b][1] < means[b][2]]
        cells = []
        for upper, lower in ((1, 0), (2, 1), (2, 0)):
            rows_of = [(full[b, ORDERING[upper]], full[b, ORDERING[lower]]) for b in backbones]
            sigmas = [gap_sigmas(row, base) for row, base in rows_of]
            mean_gap = statistics.fmean(row.mean("auc") - base.mean("auc") for row, base in rows_of)
            ahead, behind = beyond_two_sigma(sigmas)
            cells.append(f"{mean_gap:+.4f} · {ahead} / {behind}")
        held = f" ({', '.join(NAMES.get(b, b) for b in holds)})" if holds else ""
        lines.append(f"| {name} | {len(holds)} of {len(backbones)}{held} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n".join([
        "### The paper's ordering: Base < single (KAR/R2ec) < iterative (R4ec)",
        "",
        "| test samples | backbones where the mean AUCs are in that order | single − Base | iterative − single "
        "| iterative − Base |",
        "|---|---|---:|---:|---:|",
        *lines,
        "",
        "Each gap: the mean test AUC gap over the backbones that have all three rows (full runs, MLP connector), then "
        "on how many of them it is ahead / behind by more than twice its seed spread (the per-seed gaps' sample "
        "standard deviation). The table bears the paper out where every backbone is in order and both steps are "
        "ahead by more than 2σ." + chance_of_two_sigma(seeds, most, "behind a cell"),
    ])  # fmt: skip


def below_floor(rows: list[Row]) -> list[str]:
    """Backbones whose Base mean test AUC does not beat logistic regression's: a bug to find, not a result."""
    floor = next((r for r in rows if r.backbone == "lr" and r.knowledge == "none"), None)
    if floor is None:
        return []
    return [r.backbone for r in rows if r.backbone != "lr" and r.knowledge == "none" and r.mean("auc") <= floor.mean("auc")]


def knowledge_runs(rows: list[Row]) -> dict[str, tuple[str, dict]]:
    """digest -> (table mark k1, k2, ..., description), in the table's order."""
    found: dict[str, tuple[str, dict]] = {}
    for row in rows:
        if row.knowledge_run and row.knowledge_run["digest"] not in found:
            found[row.knowledge_run["digest"]] = (f"k{len(found) + 1}", row.knowledge_run)
    return found


def markdown(rows: list[Row], title: str) -> str:
    from r4ec.knowledge.runs import label

    runs = knowledge_runs(rows)
    lines = [
        f"### {title}",
        "",
        "| Backbone | Knowledge | Seeds | AUC ↑ | Rel. impr. | LogLoss ↓ | Rel. impr. | AUC gap / seed spread |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    previous, gaps = None, 0
    for row in rows:
        base = base_of(rows, row)
        auc_gain = ll_gain = ratio = ""
        if base is not None and row is not base:
            auc_gain = f"{(row.mean('auc') - base.mean('auc')) / base.mean('auc'):+.2%}"
            ll_gain = f"{(base.mean('logloss') - row.mean('logloss')) / base.mean('logloss'):+.2%}"
            ratio = gap_ratio(row, base)
            gaps += ratio != ""
        name = NAMES.get(row.backbone, row.backbone) if row.backbone != previous else ""
        previous = row.backbone
        mark = f" [{runs[row.knowledge_run['digest']][0]}]" if row.knowledge_run else ""
        lines.append(f"| {name} | {row.label}{mark} | {len(row.seeds)} | {row.spread('auc')} | {auc_gain} | "
                     f"{row.spread('logloss')} | {ll_gain} | {ratio} |")  # fmt: skip
    lines += ["", "Test split; mean ± sample standard deviation over seeds. Rel. impr. against the same backbone's "
              "Base: (AUC − AUC_base) / AUC_base and (LogLoss_base − LogLoss) / LogLoss_base. AUC gap / seed spread: "
              "the mean AUC gap to Base over the sample standard deviation of the per-seed gaps (seeds both rows "
              "have); beyond ±2 the gap exceeds twice its seed spread; empty with fewer than two shared seeds."
              + chance_of_two_sigma(max((len(r.seeds) for r in rows), default=0), gaps, "in this table")]  # fmt: skip
    if runs:
        lines += ["", "Knowledge runs (strategy and sample · model · prompts · content hash):", ""]
        lines += [f"- [{mark}] {label(about)}{coverage(about)}" for mark, about in runs.values()]
    return "\n".join(lines)


def coverage(about: dict) -> str:
    """`; samples with knowledge (parsed + fallback): user train 100% (97 + 3), valid ..., test ...; item ...`: the
    shares the training run saw, per split. Missing knowledge correlates with time, so it differs between splits."""
    shares = about.get("quality_shares") or {}
    entities: dict[str, list[str]] = {}
    for split, by_entity in shares.items():
        for entity, s in by_entity.items():
            entities.setdefault(entity, []).append(
                f"{split} {1 - s['missing']:.0%} ({s['parsed']:.0%} + {s['fallback']:.0%})"
            )
    if not entities:
        return ""
    return "; samples with knowledge (parsed + fallback): " + "; ".join(f"{e} {', '.join(p)}" for e, p in entities.items())


def plot(rows: list[Row], path: Path, title: str) -> None:
    """Grouped bars of test AUC (error bars: std over seeds), one group per backbone; LR as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = [b for b in BACKBONES if b != "lr" and any(r.backbone == b for r in rows)]
    variants = list(dict.fromkeys(r.label for r in rows if r.backbone != "lr"))
    width = 0.8 / max(len(variants), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.3 * len(backbones) + 2), 4.2))
    for n, variant in enumerate(variants):
        chosen = [next((r for r in rows if r.backbone == b and r.label == variant), None) for b in backbones]
        xs = [i + (n - (len(variants) - 1) / 2) * width for i, r in enumerate(chosen) if r is not None]
        present = [r for r in chosen if r is not None]
        axes.bar(xs, [r.mean("auc") for r in present], width, yerr=[r.std("auc") for r in present], capsize=3,
                 label=variant)  # fmt: skip
    values = [r.mean("auc") for r in rows]
    floor = next((r for r in rows if r.backbone == "lr"), None)
    if floor is not None:
        axes.axhline(floor.mean("auc"), color="grey", linestyle="--", linewidth=1, label="LR (Base)")
    axes.set_ylim(min(values) - 0.01, max(values) + 0.01)
    axes.set_xticks(range(len(backbones)), [NAMES.get(b, b) for b in backbones])
    axes.set_ylabel("test AUC")
    axes.set_title(title)
    # below the axes, three to a row: on one row, eight long labels ran off both edges
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=min(3, len(variants) + 1),
                frameon=False)  # fmt: skip
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def long_tail_rows(artifacts: Path, ctr_samples: Path) -> list[tuple[Slice, list[Row]]]:
    """Each long tail (r4ec/ranking/slices.py) with Table 2's rows on it, from the runs' saved test predictions."""
    return [(chosen, collect(artifacts, lambda run_dir, chosen=chosen: slice_metrics(run_dir, chosen)))
            for chosen in long_tails(ctr_samples)]  # fmt: skip


def long_tail(tails: list[tuple[Slice, list[Row]]], finished: int, dataset: str) -> str:
    """Table 2 on each long tail; runs trained before predictions were saved are left out, and the text says how
    many of the `finished` runs that is."""
    parts = []
    for chosen, rows in tails:
        counted = sum(len(r.seeds) for r in rows)
        note = (f"{chosen.describe()}. {counted} of {finished} finished runs (runs that saved no test predictions, or "
                "whose slice holds one class only, are left out).")  # fmt: skip
        parts.append(markdown(rows, f"Table 2 on {dataset}, {chosen.name}") + "\n\n" + note)
    return "\n\n".join(parts)


@dataclass
class Report:
    markdown: str
    markdown_path: Path
    plot_path: Path
    below_floor: list[str]
    runs: int
    long_tail_path: Path | None = None
    probe_path: Path | None = None


def write_report(
    artifacts: Path, out_dir: Path, dataset: str, ctr_samples: Path | None = None, training_dir: Path | None = None
) -> Report:
    """Table 2 (table2.md, table2.png) and its ablations against iterative (ablations.md, once there are any); given
    the CTR samples that define it, Table 2 on the long tail (long_tail.md); given the training sets, what each
    knowledge run's vectors hold on their own (knowledge_probe.md)."""
    rows = collect(artifacts)
    if not rows:
        raise RankingError(f"no finished runs under {artifacts}; train some with `r4ec train` first")
    title = f"Table 2 on {dataset}: CTR backbones with LLM knowledge"
    text = markdown(rows, title)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown_path, plot_path = out_dir / "table2.md", out_dir / "table2.png"
    markdown_path.write_text(text + "\n")
    plot(rows, plot_path, f"{dataset}: test AUC, mean ± std over seeds")
    runs, tail_path, tails = sum(len(r.seeds) for r in rows), None, []
    if ctr_samples is not None and ctr_samples.is_file():
        tails = long_tail_rows(artifacts, ctr_samples)
    tail_path = _write_if(out_dir / "long_tail.md", long_tail(tails, runs, dataset))
    _write_if(out_dir / "ordering.md", ordering([("all", rows), *((c.name, r) for c, r in tails)]))
    probe_path = write_probe(training_dir, out_dir, dataset, artifacts)
    _write_if(out_dir / "ablations.md", ablations(rows))
    return Report(text, markdown_path, plot_path, below_floor(rows), runs, tail_path, probe_path)


def _write_if(path: Path, text: str) -> Path | None:
    """The file holds `text`, or is gone when there is none (nothing left from an earlier report)."""
    path.unlink(missing_ok=True)
    if not text:
        return None
    path.write_text(text + "\n")
    return path


def write_probe(training_dir: Path | None, out_dir: Path, dataset: str, artifacts: Path | None = None) -> Path | None:
    """knowledge_probe.md for every training set here that carries knowledge vectors, and for every knowledge run
    under `artifacts` trained on a set that is not here whose result is kept for that set's stamp; None, and no file
    left from an earlier report, when none is. A set here that is not the one its runs trained on (built again since)
    is marked as such."""
    import pyarrow.parquet as pq

    from r4ec.features.store import training_set_stamp
    from r4ec.ranking.probe import kept_result, probe_training_set
    from r4ec.ranking.probe import markdown as probe_markdown

    cache = out_dir / layout.PROBE_RESULTS
    here = sorted(training_dir.glob("*.parquet")) if training_dir is not None else []
    sets = [p for p in here if "user_knowledge_vector" in pq.read_schema(p).names]
    found = {p.stem: probe_training_set(p, cache) for p in sets}
    trained = trained_sets(artifacts)
    rebuilt = {p.stem for p in sets if p.stem in trained and training_set_stamp(p) not in trained[p.stem]}
    here_names = {p.stem for p in here}  # a set here without vectors is not probed, nor replaced by a kept result
    for service, stamps in trained.items():
        if service not in here_names:
            kept = [r for r in (kept_result(cache, service, stamp) for stamp in sorted(stamps)) if r is not None]
            if kept:
                found[service] = kept[0]
    names = {service: KnowledgeRun.parse(service) for service in found}  # the service's run, named as its folder
    folder = {s: names[s].folder if names[s] else s for s in found}
    results = {folder[s]: found[s] for s in sorted(found)}
    text = probe_markdown(results, dataset, {folder[s] for s in rebuilt}) if found else ""
    return _write_if(out_dir / "knowledge_probe.md", text)


def trained_sets(artifacts: Path | None) -> dict[str, set[str]]:
    """Feature service -> the stamps of the training sets its finished runs with knowledge were trained on."""
    stamps: dict[str, set[str]] = {}
    for metrics_file in sorted(artifacts.glob("*/metrics.json")) if artifacts else []:
        config = json.loads((metrics_file.parent / "config.json").read_text())
        if config.get("knowledge_run") and config.get("training_set_fingerprint"):
            stamps.setdefault(config["feature_service"], set()).add(config["training_set_fingerprint"])
    return stamps


def write_dataset_report(settings: Settings, out_dir: Path | None = None) -> Report:
    """`write_report` for the settings' dataset: its runs, its reports folder (or `out_dir`), its long tail, its
    training sets."""
    return write_report(settings.artifacts_dir, out_dir or settings.reports_dir, settings.dataset,
                        layout.mart_path(settings, "ctr_samples"), settings.training_dir)  # fmt: skip
