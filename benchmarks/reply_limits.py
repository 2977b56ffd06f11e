"""Does the length limit cut answers short, or only replies that would never end? (issue 10: under 5 % cut)

    .venv/bin/python benchmarks/reply_limits.py --entity item --entities 64

Takes a seeded sample of a finished untuned `iterative` run's entities, rebuilds their reason prompts and, where the
reflector judged the answer not reasonable, their refine prompts (from the run's own answer and feedback), and asks
them again on a fresh llama-server with the run's settings but `--room` new tokens instead of the run's limit.
Greedy decoding makes the run's replies a prefix of these where the engine agrees with itself (the share is shown).
Per step it prints: the replies that reach the run's limit, how many of those end within the room (and at what
length), how many still run at the room and how many of those are loops (a sentence said three times, or an
8-word span four times), and the generated tokens per reply at the limit against with room: what a higher limit
would cost and what it would buy. `--dry` asks the same with llama.cpp's DRY sampler, which penalizes repeats: does
it end the loops, and how far does it move the answers? Needs the study's (or `r4ec knowledge generate --strategy
iterative --full`'s) run in data/; refuses a run made with other LLM settings, prompts or inputs than the current ones.

`--recorded` asks nothing: on every reply the run recorded, each step's (reason, reflect, refine), with the tokens
the engine generated for it (the answer cache's count) and its text in the model's own tokens (llama-server's
/tokenize), it shows what a loop stop would do, a stop that ends a reply as soon as it counts as a loop by the same
test (checked every 8 tokens): how many replies it would end, at the limit and below it, the generated tokens it
would save, and the share of replies the limit would still cut. The reply up to the stop is a prefix of the one
recorded, so this needs no generation; what it cannot show is how the later steps would answer a stopped reply.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path

from r4ec import fingerprint, layout
from r4ec.config import Settings
from r4ec.knowledge import llamacpp, prompts
from r4ec.knowledge.backends import GenerationConfig, LlamaCppBackend, Request, build_backend
from r4ec.knowledge.cache import AnswerCache
from r4ec.knowledge.job import LLM_ENTRIES, loop_config, manifest, read_inputs, select_entities
from r4ec.knowledge.loop import GENERIC_FEEDBACK
from r4ec.knowledge.report import read_knowledge

AGREE_CHARS = 200  # the run's reply and the new one agree if their first this many characters do


@dataclass
class DryBackend(LlamaCppBackend):
    """llama.cpp's DRY sampler in front of the job's: it penalizes the token that would extend a span already said
    longer than `dry_allowed_length` tokens (prompt included), more the longer the span."""

    dry_multiplier: float = 0.8
    dry_allowed_length: int = 8

    def _body(self, request: Request, config: GenerationConfig) -> dict:
        body = super()._body(request, config)
        body.update(dry_multiplier=self.dry_multiplier, dry_allowed_length=self.dry_allowed_length,
                    samplers=["dry", *body["samplers"]])  # fmt: skip
        return body


def with_dry(backend: LlamaCppBackend, multiplier: float, allowed_length: int) -> LlamaCppBackend:
    """The job's backend as it is (multiplier 0), or the same one with DRY in front."""
    if not multiplier:
        return backend
    same = {f.name: getattr(backend, f.name) for f in fields(LlamaCppBackend) if f.init and not f.name.startswith("_")}
    return DryBackend(**same, dry_multiplier=multiplier, dry_allowed_length=allowed_length)


def is_loop(text: str) -> bool:
    """A reply that repeats itself: one sentence three times, or one 8-word span four times."""
    sentences = Counter(s.strip().lower() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.split()) >= 3)
    if sentences and max(sentences.values()) >= 3:
        return True
    words = text.lower().split()
    spans = Counter(tuple(words[i : i + 8]) for i in range(len(words) - 7))
    return bool(spans) and max(spans.values()) >= 4


def loop_onset(pieces: list[str], every: int = 8) -> int | None:
    """The tokens generated when the reply first counts as a loop, checked every `every` tokens; None if it never does."""
    for n in range(every, len(pieces) + every, every):
        if is_loop("".join(pieces[:n])):
            return min(n, len(pieces))
    return None


def tokenized(url: str, text: str) -> list[str]:
    """The reply as the model's own tokens, through the server's /tokenize (a piece that is not whole UTF-8 on its
    own counts as a token with no text)."""
    import httpx

    found = httpx.post(f"{url.removesuffix('/v1')}/tokenize", json={"content": text, "with_pieces": True}, timeout=60)
    found.raise_for_status()
    return [t["piece"] if isinstance(t["piece"], str) else "" for t in found.json()["tokens"]]


def recorded(step: str, limit: int, replies: list[tuple[list[str], int]]) -> None:
    """What a loop stop would have done to one step's recorded replies, each as (its text's tokens, the tokens the
    engine generated for it): stopped at the first loop, a reply generates what it had by then."""
    n, tokens = len(replies), sum(out for _, out in replies)
    at_limit = [out for _, out in replies if out >= limit]
    stopped = [(out, at) for pieces, out in replies if (at := loop_onset(pieces)) is not None and at < out]
    ended_at_limit = sum(out >= limit for out, _ in stopped)
    saved = sum(out - at for out, at in stopped)
    print(f"{step}: {n} replies, {tokens:,} tokens; {len(at_limit)} reach the limit of {limit} ({len(at_limit) / max(n, 1):.1%}), "
          f"holding {sum(at_limit) / max(tokens, 1):.0%} of the tokens; a loop stop would end {ended_at_limit} "
          f"of those and {len(stopped) - ended_at_limit} below the limit, saving {saved:,} tokens "
          f"({saved / max(tokens, 1):.1%}); the limit would still cut {len(at_limit) - ended_at_limit} "
          f"({(len(at_limit) - ended_at_limit) / max(n, 1):.1%})")  # fmt: skip


def generated_tokens(settings: Settings) -> dict[str, int]:
    """Each cached reply's text -> the tokens the engine generated for it (the run's own count, limit included)."""
    cache = AnswerCache(settings.answer_cache_path)
    try:
        return {text: out for _, text, _, out in cache.store.items()}
    finally:
        cache.store.close()


def check_run(settings: Settings, entity: str, run_dir: Path, inputs: dict[str, dict]) -> dict:
    """The run's manifest, if its answers came from these inputs and the settings this script will ask with; else
    a one-line exit."""
    path = run_dir / layout.MANIFEST
    if not path.exists():
        raise SystemExit(f"no finished run at {run_dir}: run the study, or `r4ec knowledge generate --full` with "
                         "--strategy iterative")
    found = json.loads(path.read_text())
    now = manifest(settings, entity, found.get("inputs", ""), found.get("parts", 0))
    changed = [key for key in (*LLM_ENTRIES, "prompt_version") if found.get(key) != now[key]]
    ids = select_entities(list(inputs), found.get("limit"), settings.seed)
    if fingerprint.of_rows([inputs[i] for i in ids]) != found.get("inputs"):
        changed.append("the prompt inputs")
    if changed:
        raise SystemExit(f"{run_dir} was made from other inputs or settings than today's ({', '.join(changed)}): "
                         "its replies are not comparable")
    return found


def questions(settings: Settings, entity: str, records: list[dict], inputs: dict[str, dict]) -> dict[str, list]:
    """Per step, [(chat, the run's reply)]: every reason prompt, and the refine prompts the run asked."""
    domain, asked = settings.domain, {"reason": [], "refine-1": []}
    for record in records:
        row = inputs[record[f"{entity}_id"]]
        said = {r["step"]: r["reply"] for r in record["replies"]}  # a strict retry is a step of its own
        asked["reason"].append((prompts.reason_chat(entity, domain, row), said["reason"]))
        if record["judgements"] and record["judgements"][0] == "not reasonable" and "refine-1" in said:
            feedback = record["reflections"][0] or GENERIC_FEEDBACK
            chat = prompts.refine_chat(entity, domain, row, record["answers"][0], feedback)
            asked["refine-1"].append((chat, said["refine-1"]))
    return asked


def report(step: str, limit: int, room: int, generations: list, before: list[str]) -> None:
    n = len(generations)
    at_limit = [g for g in generations if g.tokens_out >= limit]
    ended = sorted(g.tokens_out for g in at_limit if g.tokens_out < room)
    running = [g for g in at_limit if g.tokens_out >= room]
    loops = sum(is_loop(g.text) for g in running)
    capped = sum(min(g.tokens_out, limit) for g in generations)
    roomy = sum(g.tokens_out for g in generations)
    alike = sum(g.text[:AGREE_CHARS] == old[:AGREE_CHARS] for g, old in zip(generations, before))
    median = f" (median {statistics.median(ended):.0f} tokens)" if ended else ""
    print(f"{step}: {n} replies, {len(at_limit)} reach the limit of {limit} tokens ({len(at_limit) / max(n, 1):.0%}); "
          f"of those {len(ended)} end within {room}{median}, {len(running)} still run at {room} ({loops} of them "
          f"loops); generated tokens per reply {capped / max(n, 1):.0f} at the limit, {roomy / max(n, 1):.0f} with "
          f"room; {alike}/{n} agree with the run's reply in their first {AGREE_CHARS} characters")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", choices=layout.ENTITIES, default="item", help="whose prompts (default item)")
    parser.add_argument("--entities", type=int, default=64, help="a seeded sample of this many (default 64)")
    parser.add_argument("--room", type=int, default=768,
                        help="new tokens allowed instead of the run's limit (default 768)")
    parser.add_argument("--dry", type=float, default=0.0, help="also apply llama.cpp's DRY repetition sampler at this "
                        "multiplier (e.g. 0.8; default 0: off, as the job runs)")  # fmt: skip
    parser.add_argument("--dry-length", type=int, default=8, help="DRY: repeated spans up to this many tokens go "
                        "unpenalized (default 8: a title or a rating line may be quoted)")  # fmt: skip
    parser.add_argument("--recorded", action="store_true", help="ask nothing: what a loop stop would do to every reply "
                        "the run recorded (--entities, --room and --dry do not apply)")  # fmt: skip
    args = parser.parse_args()
    settings = Settings(knowledge={"strategy": "iterative"})
    run_dir = layout.knowledge_dir(settings, args.entity)
    key = f"{args.entity}_id"
    inputs = read_inputs(layout.prompt_inputs_path(settings, args.entity), args.entity)
    limit = check_run(settings, args.entity, run_dir, inputs)["max_new_tokens"]
    records = read_knowledge(run_dir)
    if args.recorded:
        loop_stop(settings, args.entity, run_dir, limit, records)
        return
    ids = set(select_entities(sorted(r[key] for r in records), args.entities, settings.seed))
    chosen = [r for r in records if r[key] in ids]
    asked = questions(settings, args.entity, chosen, inputs)
    cfg = loop_config(settings, args.entity)
    configs: dict[str, GenerationConfig] = {"reason": cfg.reason_generation(), "refine-1": cfg.refine_generation()}
    dry = f", DRY {args.dry} beyond {args.dry_length} tokens" if args.dry else ""
    with tempfile.TemporaryDirectory() as scratch, llamacpp.serving(settings, Path(scratch)) as engines:
        model = engines["actor"]["model"]
        print(f"{run_dir}: {len(chosen)} {args.entity}s, limit {limit}, room {args.room}{dry}, {model}")
        backend = with_dry(build_backend(settings, engine=engines["actor"]), args.dry, args.dry_length)
        for step, pairs in asked.items():
            config = replace(configs[step], max_new_tokens=args.room)
            generations = backend.generate([Request.chat(chat) for chat, _ in pairs], config)
            report(step, limit, args.room, generations, [old for _, old in pairs])


def loop_stop(settings: Settings, entity: str, run_dir: Path, limit: int, records: list[dict]) -> None:
    """Each step's recorded replies, tokenized without the opening tag the engine was given (prefill), with the
    tokens the engine counted for each from the answer cache; a strict retry counts with its step."""
    cfg = loop_config(settings, entity)
    prefills = {step: config.prefix or "" for step, config in
                (("reason", cfg.reason_generation()), ("reflect", cfg.reflect_generation()), ("refine", cfg.refine_generation()))}  # fmt: skip
    counted = generated_tokens(settings)
    steps: dict[str, list[str]] = {}
    for record in records:
        for reply in record["replies"]:
            steps.setdefault(re.sub(r"-\d+| \(strict\)", "", reply["step"]), []).append(reply["reply"])
    missing = sum(text not in counted for texts in steps.values() for text in texts)
    with tempfile.TemporaryDirectory() as scratch, llamacpp.serving(settings, Path(scratch)) as engines:
        print(f"{run_dir}: {len(records)} entities, limit {limit}, the replies it recorded, tokenized by "
              f"{engines['actor']['model']} (actor) and {engines['reflector']['model']} (reflector)")  # fmt: skip
        for step, texts in steps.items():
            url = engines["reflector" if step == "reflect" else "actor"]["url"]
            pieces = [tokenized(url, text.removeprefix(prefills[step])) for text in texts]
            recorded(step, limit, [(p, counted.get(text, len(p))) for p, text in zip(pieces, texts)])
        if missing:
            print(f"{missing} replies not in the answer cache ({settings.answer_cache_path}): their tokens are their "
                  "text's, tokenized again")  # fmt: skip


if __name__ == "__main__":
    main()
