"""`r4ec knowledge report`: what a knowledge run produced, as a Markdown table and a few answer chains."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds

from r4ec.knowledge import KnowledgeError


def read_knowledge(out_dir: Path) -> list[dict]:
    if not any(out_dir.glob("part-*.parquet")):
        raise KnowledgeError(f"{out_dir}: no knowledge parts: run `r4ec knowledge generate` first")
    table = ds.dataset(out_dir, format="parquet").to_table()
    if "quality" not in table.column_names:
        raise KnowledgeError(f"{out_dir} was generated before knowledge carried a quality flag: regenerate it with "
                             "`r4ec knowledge generate --overwrite` (cached answers make that cheap)")  # fmt: skip
    return table.to_pylist()


def summarize(rows: list[dict]) -> dict[str, object]:
    """The figures of the report, as numbers (tests read these)."""
    rounds = max((len(r["judgements"]) for r in rows), default=0)
    strategy = rows[0]["strategy"] if rows else None
    reasonable = []
    for n in range(rounds):
        verdicts = [r["judgements"][n] for r in rows if len(r["judgements"]) > n]
        judged = [v for v in verdicts if v is not None]
        reasonable.append((sum(v == "reasonable" for v in judged), len(judged), len(verdicts) - len(judged)))
    parts = {(r["part"], r["generated_at"]): (r["part_seconds"], r["llm_calls"]) for r in rows}  # refreshes reuse numbers
    busy = sum(seconds for seconds, _ in parts.values())
    generated = sum(r["generated_tokens"] for r in rows)
    return {
        "entities": len(rows),
        "strategy": strategy,
        "reasonable_per_round": reasonable,  # (judged reasonable, judged, no verdict) for each reflection
        "refinements": sum(r["rounds_used"] for r in rows),
        "entities_refined": sum(r["rounds_used"] > 0 for r in rows),
        "parse_failures": dict(Counter(step for r in rows for step in r["parse_failures"])),
        "quality": dict(Counter(r["quality"] for r in rows)),  # parsed / fallback
        "kept_per_entity": sum(len(r["kept_answers"]) for r in rows) / len(rows) if strategy == "filter" else None,
        "tokens_in": sum(r["tokens_in"] for r in rows),
        "tokens_out": sum(r["tokens_out"] for r in rows),
        "replies": sum(len(r.get("replies") or []) for r in rows),  # behind the knowledge, generated now or cached
        "llm_calls": sum(r["llm_calls"] for r in rows),
        "generated_tokens": generated,
        "prompt_tokens_computed": sum(r.get("prompt_tokens_computed") or 0 for r in rows),  # the rest: prefix cache
        "replies_cut": sum(r.get("replies_cut") or 0 for r in rows),  # of llm_calls, stopped by max_new_tokens
        "generation_seconds": busy,
        "tokens_per_second": generated / busy if busy and generated else None,
    }


def _table(summary: dict) -> str:
    lines = ["| measure | value |", "| --- | --- |"]

    def add(name: str, value: object) -> None:
        lines.append(f"| {name} | {value} |")

    add("entities", f"{summary['entities']:,}")
    add("strategy", summary["strategy"])
    for n, (ok, judged, missing) in enumerate(summary["reasonable_per_round"], start=1):
        share = f"{ok / judged:.0%}" if judged else "n/a"
        add(f"judged reasonable, reflection {n}", f"{share} ({ok}/{judged}; {missing} without a verdict)")
    add("refinements made", f"{summary['refinements']:,} ({summary['entities_refined']:,} entities)")
    if summary["kept_per_entity"] is not None:
        add("answers kept per entity", f"{summary['kept_per_entity']:.2f}")
    quality = summary["quality"]
    add("knowledge quality", ", ".join(f"{name} {n:,}" for name, n in sorted(quality.items())))
    failures = summary["parse_failures"]
    add("parse failures", ", ".join(f"{step}: {n}" for step, n in sorted(failures.items())) or "none")
    add("tokens in / out", f"{summary['tokens_in']:,} / {summary['tokens_out']:,}")
    add("LLM calls in the last run", f"{summary['llm_calls']:,}")
    if summary["llm_calls"]:
        add("prompt tokens computed / generated (last run)",
            f"{summary['prompt_tokens_computed']:,} / {summary['generated_tokens']:,}")  # fmt: skip
        add("replies cut by the length limit", f"{summary['replies_cut']:,} ({summary['replies_cut'] / summary['llm_calls']:.1%})")
    speed = summary["tokens_per_second"]
    idle = "n/a (no LLM)" if summary["strategy"] == "text" else "n/a (all answers came from the cache)"
    add("generated tokens/s", f"{speed:.1f}" if speed else idle)
    return "\n".join(lines)


def _chain(row: dict, entity: str) -> str:
    out = [f"### {entity} {row[f'{entity}_id']} (as of {row['event_timestamp']:%Y-%m-%d %H:%M:%S})"]
    for reply in row["replies"]:
        out.append(f"**{reply['step']}**\n\n> " + reply["reply"].replace("\n", "\n> "))
    out.append(f"**final knowledge** ({row['rounds_used']} refinements, {row['quality']})\n\n> {row['knowledge']}")
    return "\n\n".join(out)


def knowledge_report(out_dir: Path, entity: str, examples: int = 2) -> str:
    rows = read_knowledge(out_dir)
    text = [f"## {entity}_knowledge at {out_dir}", "", _table(summarize(rows))]
    refined = [r for r in rows if r["rounds_used"] > 0]
    shown = (refined + [r for r in rows if r["rounds_used"] == 0])[:examples]
    if shown:
        text += ["", "## Example answer chains", ""] + [_chain(r, entity) for r in shown]
    return "\n".join(text)
