"""LoRA tuning with peft: the actor on D_reason ∪ D_refine, the reflector on D_reflect (DESIGN §4).

Each example is a chat whose last turn is the teacher's reply. The loss is on the reply's tokens only (the end of
turn included, so the model learns to stop): the prompt, rendered by the model's chat template with the generation
prompt, is masked with -100. The paper's recipe is the default (rank 8, alpha 16, every linear layer, lr 1e-4, 3
epochs, cosine schedule with 10 % warmup, 5 % of the examples for validation); `models/lora.toml` records it and the
CPU profile. Each epoch ends with a checkpoint (adapter, optimizer, schedule) that a killed run resumes from. The
adapter is saved with `training.json`: the recipe, the base model and the data sets by content hash, and the loss per
epoch.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from r4ec import fingerprint
from r4ec.local_models import is_adapter, model_identity

log = logging.getLogger(__name__)
ROLE_SETS = {"actor": ("reason", "refine"), "reflector": ("reflect",)}
IGNORE = -100
PROGRESS_INTERVAL_S = 30.0


class TuningError(Exception):
    """Tuning cannot start (no data, a checkpoint from another run); one line for the user."""


@dataclass(frozen=True)
class Recipe:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    learning_rate: float = 1e-4
    epochs: int = 3
    warmup: float = 0.1
    valid_fraction: float = 0.05
    batch_size: int = 4
    # examples per forward pass; a step accumulates the batch's gradients from these (the same step, less memory:
    # eager attention keeps batch x heads x length^2 floats per layer for the backward pass)
    micro_batch_size: int | None = None  # None: the whole batch at once
    max_length: int = 1536  # tokens; a longer example is cut from the left of its prompt, never its reply
    target_modules: str = "all-linear"
    seed: int = 42


PROFILES = Path(__file__).resolve().parents[2] / "models" / "lora.toml"


def recipe(profile: str, **overrides: object) -> Recipe:
    """A profile of models/lora.toml, with the command line's overrides (None: the profile's)."""
    import tomllib

    profiles = tomllib.loads(PROFILES.read_text())
    if profile not in profiles:
        raise TuningError(f"no LoRA profile '{profile}' in {PROFILES} (profiles: {', '.join(profiles)})")
    return Recipe(**{**profiles[profile], **{k: v for k, v in overrides.items() if v is not None}})


def encode(tokenizer, messages: list[dict[str, str]], max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): the prompt's tokens labelled IGNORE, the reply's (with the end of turn) labelled."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise TuningError("the chat template renders the reply's turn differently from its generation prompt")
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    reply_ids = tokenizer(full[len(prompt) :], add_special_tokens=False).input_ids
    keep = max(0, min(len(prompt_ids), max_length - len(reply_ids)))
    prompt_ids = prompt_ids[len(prompt_ids) - keep :]
    return prompt_ids + reply_ids, [IGNORE] * len(prompt_ids) + reply_ids


def read_examples(sft_dir: Path, role: str) -> tuple[list[list[dict]], dict[str, str]]:
    """The role's chats, and each data set file by content hash."""
    files = [sft_dir / f"{name}.jsonl" for name in ROLE_SETS[role]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise TuningError(f"{', '.join(missing)} not found: run `r4ec tuning build-data` first")
    chats = [json.loads(line)["messages"] for f in files for line in f.read_text().splitlines() if line.strip()]
    if len(chats) < 2:
        raise TuningError(f"{len(chats)} {role} examples in {sft_dir}: too few to train and validate on")
    return chats, {f.name: fingerprint.of_file(f) for f in files}


def _batches(rows: list[tuple[list[int], list[int]]], size: int, pad: int, order: list[int]):
    for start in range(0, len(order), size):
        yield _padded([rows[i] for i in order[start : start + size]], pad)


def _micro_batches(rows: list[tuple[list[int], list[int]]], size: int, micro: int | None, pad: int, order: list[int]):
    """Each batch of `size` examples as micro-batches of `micro`, each padded to its own longest example."""
    for start in range(0, len(order), size):
        batch = order[start : start + size]
        step = micro or len(batch)
        yield [_padded([rows[i] for i in batch[m : m + step]], pad) for m in range(0, len(batch), step)]


def _padded(chunk: list[tuple[list[int], list[int]]], pad: int):
    import torch

    width = max(len(ids) for ids, _ in chunk)
    ids = torch.full((len(chunk), width), pad)
    labels = torch.full((len(chunk), width), IGNORE)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for n, (i, label) in enumerate(chunk):
        ids[n, : len(i)], labels[n, : len(i)], mask[n, : len(i)] = torch.tensor(i), torch.tensor(label), 1
    return ids, labels, mask


def _labelled(labels) -> int:
    """Tokens that carry loss (the model predicts token t + 1 from t: the first label is never predicted)."""
    return int((labels[:, 1:] != IGNORE).sum())


def _loss(model, rows, batch_size: int, pad: int) -> float:
    """Mean loss per labelled token."""
    import torch

    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ids, labels, mask in _batches(rows, batch_size, pad, list(range(len(rows)))):
            n = _labelled(labels)
            total += model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() * n
            tokens += n
    return total / max(1, tokens)


@dataclass
class TuningResult:
    out_dir: Path
    examples: int
    epochs: list[dict]
    seconds: float
    tokens_per_second: float

    def line(self) -> str:
        last = self.epochs[-1]
        return (f"adapter at {self.out_dir}: {self.examples:,} examples, {len(self.epochs)} epochs, train loss "
                f"{last['train_loss']:.4f}, valid loss {last['valid_loss']:.4f}, {self.seconds:.0f}s "
                f"({self.tokens_per_second:.0f} tokens/s)")  # fmt: skip


def train_adapter(base: Path, base_name: str, chats: list[list[dict]], data: dict[str, str], out_dir: Path,
                  recipe: Recipe = Recipe()) -> TuningResult:  # fmt: skip
    """LoRA on `base` (a model folder); a checkpoint of the same run (same base, data and recipe) is resumed."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    torch.manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [encode(tokenizer, chat, recipe.max_length) for chat in chats]
    order = list(range(len(rows)))
    random.Random(recipe.seed).shuffle(order)
    n_valid = max(1, round(len(rows) * recipe.valid_fraction))
    valid, train = [rows[i] for i in order[:n_valid]], [rows[i] for i in order[n_valid:]]
    about = {"base": base_name, "recipe": asdict(recipe), "data": data, "examples": len(rows), "valid": n_valid}
    if done := _finished(out_dir, about):
        log.info("%s: this run (same base, data and recipe) is done: kept as it is", out_dir / "adapter")
        return done
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                      target_modules=recipe.target_modules, task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.learning_rate)
    steps_per_epoch = -(-len(train) // recipe.batch_size)
    schedule = get_cosine_schedule_with_warmup(optimizer, round(recipe.warmup * steps_per_epoch * recipe.epochs),
                                               steps_per_epoch * recipe.epochs)  # fmt: skip
    epochs = _resume(out_dir, about, model, optimizer, schedule, set_peft_model_state_dict, load_peft_weights)
    started, seen, steps_run = time.perf_counter(), 0, 0
    generator = random.Random(recipe.seed)
    for epoch in range(1, recipe.epochs + 1):
        epoch_order = list(range(len(train)))
        generator.shuffle(epoch_order)  # drawn for every epoch, done or not: a resumed run sees the same order
        if epoch <= len(epochs):
            continue
        model.train()
        total, tokens, reported = 0.0, 0, time.perf_counter()
        batches = _micro_batches(train, recipe.batch_size, recipe.micro_batch_size, pad, epoch_order)
        for step, micro_batches in enumerate(batches, 1):
            optimizer.zero_grad()
            in_batch = sum(_labelled(labels) for _, labels, _ in micro_batches)
            for ids, labels, mask in micro_batches:
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss  # mean over its labelled tokens
                n = _labelled(labels)
                (loss * n / in_batch).backward()  # summed: the gradient of the whole batch's mean loss
                total, tokens, seen = total + loss.item() * n, tokens + n, seen + int(mask.sum())
            optimizer.step()
            schedule.step()
            steps_run += 1
            if time.perf_counter() - reported >= PROGRESS_INTERVAL_S:
                reported, left = time.perf_counter(), (recipe.epochs - epoch + 1) * steps_per_epoch - step
                log.info("epoch %d/%d: step %d/%d, train loss %.4f, %.0f tokens/s, ETA %.0fs", epoch, recipe.epochs,
                         step, steps_per_epoch, total / max(1, tokens), seen / (reported - started),
                         (reported - started) / steps_run * left)  # fmt: skip
        epochs.append({"epoch": epoch, "train_loss": total / max(1, tokens), "valid_loss": _loss(model, valid, recipe.micro_batch_size or recipe.batch_size, pad)})
        log.info("epoch %d/%d: train loss %.4f, valid loss %.4f", epoch, recipe.epochs, epochs[-1]["train_loss"],
                 epochs[-1]["valid_loss"])  # fmt: skip
        _checkpoint(out_dir, about, model, optimizer, schedule, epochs)
    seconds = time.perf_counter() - started
    model.save_pretrained(out_dir / "adapter")
    record = {**about, "epochs": epochs, "seconds": seconds, "tokens_per_second": seen / seconds if seconds else 0.0}
    (out_dir / "training.json").write_text(json.dumps(record, indent=1))
    return TuningResult(out_dir / "adapter", len(rows), epochs, seconds, record["tokens_per_second"])


def _finished(out_dir: Path, about: dict) -> TuningResult | None:
    """The result a finished run of this very training recorded (its adapter saved), else None: run again, it is
    not trained again, and its training.json keeps the time the training took."""
    record_path = out_dir / "training.json"
    if not (record_path.is_file() and is_adapter(out_dir / "adapter")):
        return None
    record = json.loads(record_path.read_text())
    wanted = json.loads(json.dumps(about))  # as a record reads back
    if {key: record.get(key) for key in wanted} != wanted or len(record["epochs"]) != about["recipe"]["epochs"]:
        return None
    return TuningResult(out_dir / "adapter", record["examples"], record["epochs"], record["seconds"],
                        record["tokens_per_second"])  # fmt: skip


def _checkpoint(out_dir: Path, about: dict, model, optimizer, schedule, epochs: list[dict]) -> None:
    import torch

    target = out_dir / "checkpoint"
    partial = out_dir / "checkpoint.partial"
    model.save_pretrained(partial)
    torch.save({"about": about, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "epochs": epochs}, partial / "state.pt")  # fmt: skip
    if target.exists():
        import shutil

        shutil.rmtree(target)
    partial.rename(target)


def _resume(out_dir: Path, about: dict, model, optimizer, schedule, set_state, load_weights) -> list[dict]:
    """The epochs a checkpoint of this very run holds (its weights, optimizer and schedule loaded), else none."""
    import torch

    state_path = out_dir / "checkpoint" / "state.pt"
    if not state_path.is_file():
        return []
    state = torch.load(state_path, weights_only=False)
    if state["about"] != about:
        raise TuningError(f"{out_dir} holds a checkpoint of another run (base, data or recipe): remove it to start over")
    set_state(model, load_weights(str(out_dir / "checkpoint")))
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    log.info("resuming from the checkpoint after epoch %d", len(state["epochs"]))
    return list(state["epochs"])


def base_model(settings) -> tuple[Path, str]:
    """The folder of the model the adapters are trained on (the knowledge model, as transformers loads it)."""
    from r4ec.local_models import SMOLLM2, smollm2_checkpoint

    model = settings.knowledge.model
    path = smollm2_checkpoint(settings.models_dir, "float32") if model == SMOLLM2 else Path(model)
    if not (path / "config.json").is_file():
        raise TuningError(f"{path}: not a transformers model folder (LoRA tuning needs one)")
    return path, model_identity(model)
