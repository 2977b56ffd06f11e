"""A training set (as Feast returns it) turned into tensors once; a batch is an index into them.

The batch contract every backbone takes (DESIGN §6):
    fields           [B, F] long   categorical fields (user, item, category, brand, age, gender, occupation)
    history          [B, K, 3] long  the K previous items: item id, category, brand (oldest first, padded at the end;
                                     K is the marts' history_length: a longer history is an error, never cut)
    history_ratings  [B, K] float
    history_mask     [B, K] bool   True where a real interaction
    knowledge        [B, N, D] float or None   N knowledge vectors (user, item), zeros where missing
    knowledge_mask   [B, N] bool or None   True where the vector exists: a missing one is a state of its own, not zeros
    label            [B] float

Indices: one id space for all fields (each field has an offset), 0 = padding / missing, and per field one index for
values never seen in training. History items share the item field's ids, so a target item and the same item in a
history have the same embedding. Vocabularies come from the train split only. A missing value (null, or NaN where
pandas turned a null number into one: Amazon has no demographics, books may lack a brand or a category) is padding,
never a value of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from r4ec.ranking import RankingError

FIELDS = ("user_id", "item_id", "category", "brand", "age", "gender", "occupation")
HISTORY = (("history_item_ids", "item_id"), ("history_categories", "category"), ("history_brands", "brand"))
PAD, UNKNOWN = 0, 1  # within a field; a field's ids start at its offset


@dataclass
class Vocab:
    values: dict[str, dict[str, int]]  # field -> value -> id within the field (>= 2)
    offsets: dict[str, int]  # field -> first id of the field in the shared id space
    size: int

    @classmethod
    def fit(cls, train: pa.Table) -> Vocab:
        values, offsets, size = {}, {}, 1  # id 0 of the shared space is padding for every field
        for field in FIELDS:
            seen = set(_strings(train.column(field)))
            for history, of_field in HISTORY:
                if of_field == field and history in train.column_names:
                    seen |= set(_strings(pc.list_flatten(train.column(history))))
            seen -= {"", None}  # missing: padding, and None cannot be sorted among strings
            values[field] = {value: n for n, value in enumerate(sorted(seen), start=2)}
            offsets[field] = size - 1  # so that field id 1 (unknown) lands on size, and pad stays 0
            size += len(values[field]) + 1
        return cls(values, offsets, size)

    def as_dict(self) -> dict:
        return {"values": self.values, "offsets": self.offsets, "size": self.size}

    @classmethod
    def from_dict(cls, saved: dict) -> Vocab:
        return cls(saved["values"], saved["offsets"], saved["size"])

    def encode(self, field: str, column) -> np.ndarray:
        """Shared-space ids of a column's values: 0 for missing, the field's 'unknown' for unseen values."""
        lookup = self.values[field]
        ids = np.array([lookup.get(v, UNKNOWN) if v not in (None, "") else PAD for v in _strings(column)], np.int64)
        return np.where(ids == PAD, 0, ids + self.offsets[field])


def _strings(column) -> list[str | None]:
    """Values as strings (ages are numbers); None and NaN are None."""
    return [None if v is None or v != v else str(v) for v in column.to_pylist()]


@dataclass
class Batch:
    fields: torch.Tensor
    history: torch.Tensor
    history_ratings: torch.Tensor
    history_mask: torch.Tensor
    knowledge: torch.Tensor | None
    label: torch.Tensor
    knowledge_mask: torch.Tensor | None = None  # None: every vector is there


@dataclass
class Tensors(Batch):
    """A whole split as tensors; `batch(index)` slices every tensor the same way (no per-row Python)."""

    def __len__(self) -> int:
        return len(self.label)

    def batch(self, index: torch.Tensor) -> Batch:
        knowledge = None if self.knowledge is None else self.knowledge[index]
        present = None if self.knowledge_mask is None else self.knowledge_mask[index]
        return Batch(self.fields[index], self.history[index], self.history_ratings[index],
                     self.history_mask[index], knowledge, self.label[index], present)  # fmt: skip

    def subset(self, index: torch.Tensor) -> Tensors:
        return Tensors(**vars(self.batch(index)))


def _padded(values: np.ndarray, lengths: np.ndarray, width: int, dtype) -> np.ndarray:
    """Flat list values + lengths (each <= width) -> [rows, width], left-aligned, zeros after."""
    out = np.zeros((len(lengths), width), dtype)
    out[np.arange(width)[None, :] < lengths[:, None]] = values  # row-major: each row's values in order
    return out


def vector_column(table: pa.Table, name: str, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """list<float> column -> ([rows, D] float32, [rows] bool present); a missing vector is zeros, and not present.
    `width`: D when known (scoring), so that rows without any vector are no error."""
    column = table.column(name).combine_chunks()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if not valid.any() and width is None:
        raise RankingError(f"no sample of the training set has a {name}: was that knowledge run encoded?")
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
    width = width or len(flat) // max(int(valid.sum()), 1)
    if len(flat) != width * int(valid.sum()):
        raise RankingError(f"{name}: vectors of {len(flat) / max(int(valid.sum()), 1):g} values, the model takes {width}")
    out = np.zeros((len(column), width), np.float32)
    out[valid] = flat.reshape(-1, width)
    return out, valid


def label_column(table: pa.Table) -> np.ndarray:
    """The labels; zeros where the table has none (candidates to score)."""
    if "label" not in table.column_names:
        return np.zeros(table.num_rows, np.float32)
    return table.column("label").to_numpy().astype(np.float32)


def _history(table: pa.Table, vocab: Vocab, history_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([rows, K, 3] ids, [rows, K] ratings, [rows, K] mask) of the history columns."""
    lengths = pc.list_value_length(table.column("history_item_ids")).fill_null(0).to_numpy()
    if len(lengths) and lengths.max() > history_length:
        raise RankingError(
            f"{int((lengths > history_length).sum()):,} samples have histories of up to {lengths.max()} items, "
            f"longer than history_length {history_length}: train with the K the marts were built with "
            "(R4EC_HISTORY_LENGTH), or rebuild the marts with this one"
        )
    history = np.stack(
        [
            _padded(vocab.encode(of_field, pc.list_flatten(table.column(column))), lengths, history_length, np.int64)
            for column, of_field in HISTORY
        ],
        axis=2,
    )
    ratings = pc.list_flatten(table.column("history_ratings")).to_numpy(zero_copy_only=False).astype(np.float32)
    mask = np.arange(history_length)[None, :] < np.minimum(lengths, history_length)[:, None]
    return history, _padded(ratings, lengths, history_length, np.float32), mask


def to_tensors(
    table: pa.Table, vocab: Vocab, history_length: int, knowledge: tuple[str, ...] = (), knowledge_dim: int | None = None,
    one_user: bool = False,
) -> Tensors:
    """The table as tensors with histories `history_length` wide. A longer history means the training set was built
    with a larger K than the model's: that is an error, not a cut (the model would silently see less than the
    marts hold). `knowledge_dim`: the vectors' width where a table may have none (a ranking request). `one_user`:
    every row is the same user's (a ranking request), so the history is encoded once and repeated."""
    fields = np.stack([vocab.encode(field, table.column(field)) for field in FIELDS], axis=1)
    history, history_ratings, mask = _history(table.slice(0, 1) if one_user else table, vocab, history_length)
    if one_user:
        history, history_ratings, mask = (np.repeat(a, table.num_rows, axis=0) for a in (history, history_ratings, mask))
    vectors = present = None
    if knowledge:
        found = [vector_column(table, c, knowledge_dim) for c in knowledge]
        vectors = torch.from_numpy(np.stack([v for v, _ in found], axis=1))  # [rows, N, D]
        present = torch.from_numpy(np.stack([p for _, p in found], axis=1))  # [rows, N]
    return Tensors(
        torch.from_numpy(fields), torch.from_numpy(history), torch.from_numpy(history_ratings), torch.from_numpy(mask),
        vectors, torch.from_numpy(label_column(table)), present,
    )  # fmt: skip
