"""Tokenize once: the training texts become token ids before training, cached with the dataset.

Without this, sentence-transformers' data collator tokenizes every batch as it is drawn, in the
training process, every epoch; on a GPU machine the accelerator waits for it. Here the text
columns are tokenized once with ``datasets.map`` (several processes for large data), stored
unpadded next to the texts as ``__tok__<column>__<key>`` columns, and the collator only pads them.
A dataset read from files keeps the result in its cache under a fingerprint of (data, tokenizer,
max length), so the next run over the same data skips the work entirely.

Padding per batch reproduces the tokenizer's own batch output exactly (same ids, attention mask
and token types, right or left padding), and :func:`pretokenize` checks this on real rows before
training: if anything differs (a tokenizer or module that preprocesses in ways a plain tokenizer
call does not), it says so and training tokenizes per batch as before.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Value
from sentence_transformers.base.data_collator import (
    DEFAULT_LABEL_COLUMNS as label_columns,
)
from sentence_transformers.sentence_transformer.modules import StaticEmbedding, Transformer

from ..models.sorted_forward import first_transformer
from ..reporting import progress

PREFIX = "__tok__"
_KEYS = ("input_ids", "token_type_ids")


def _column(text_column: str, key: str) -> str:
    return f"{PREFIX}{text_column}__{key}"


@dataclass
class Pretokenized:
    dataset: Any
    text_columns: list[str]
    seconds: float
    cached: bool


def text_columns(dataset: Any) -> list[str]:
    """The string columns the collator would tokenize (sentence-transformers' label columns aside)."""

    return [
        name for name, feature in dataset.features.items()
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string")
        and name not in label_columns and name != "dataset_name" and not name.startswith(PREFIX)
    ]


def token_columns(dataset: Any) -> list[str]:
    return [name for name in dataset.column_names if name.startswith(PREFIX)]


def static_embedding(model: Any) -> Any:
    """The model's first module if it is a plain ``StaticEmbedding`` (token ids summed in an
    EmbeddingBag: no padding, no attention mask), else None."""
    children = list(model.children()) if hasattr(model, "children") else []
    return children[0] if children and type(children[0]) is StaticEmbedding else None


def qualifies(model: Any) -> bool:
    """A plain transformer text encoder (not a subclass, which may preprocess its own way) with a
    fast tokenizer, or a plain StaticEmbedding, is pre-tokenized."""

    transformer = first_transformer(model)
    if type(transformer) is Transformer and getattr(transformer.tokenizer, "is_fast", False):
        return True
    return static_embedding(model) is not None


def _tokenizer_key(model: Any) -> str:
    static = static_embedding(model)
    backend = static.tokenizer if static is not None else first_transformer(model).tokenizer.backend_tokenizer
    h = hashlib.sha256()
    spec = json.loads(backend.to_str())  # the `tokenizers.Tokenizer` that makes the ids
    for state in ("truncation", "padding"):  # set by each call, not part of what the ids are
        spec.pop(state, None)
    h.update(json.dumps(spec, sort_keys=True).encode())
    if static is not None:  # called as StaticEmbedding.preprocess calls it: no special tokens, no truncation
        h.update(b"StaticEmbedding, no special tokens")
    else:
        tokenizer = first_transformer(model).tokenizer
        h.update(json.dumps([type(tokenizer).__name__, model.max_seq_length, tokenizer.padding_side,
                             tokenizer.pad_token_id, getattr(tokenizer, "model_input_names", None)]).encode())
    return h.hexdigest()[:16]


def pretokenize(
    dataset: Any, model: Any, echo: Callable[[str], None] = print, num_proc: int | None = None, name: str = ""
) -> Pretokenized | None:
    """Add the token-id columns to ``dataset`` (cached), or None if this model or data does not qualify.
    ``name`` (the dataset's) goes into the progress bar's description: "Tokenizing <name> once"."""

    if not qualifies(model) or len(dataset) == 0:
        return None
    columns = text_columns(dataset)
    if not columns:
        return None
    static = static_embedding(model)
    if static is not None:  # as StaticEmbedding.preprocess encodes: no special tokens, no truncation
        bag_tokenizer = static.tokenizer
        keys = ["input_ids"]

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            return {_column(c, "input_ids"): [e.ids for e in bag_tokenizer.encode_batch(batch[c],
                                                                                        add_special_tokens=False)]
                    for c in columns}

        collator = PretokenizedCollator(None, None, bags=True)
    else:
        tokenizer = first_transformer(model).tokenizer
        max_length = model.max_seq_length
        keys = [k for k in _KEYS if k in tokenizer.model_input_names] or ["input_ids"]

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            out = {}
            for c in columns:
                encoded = tokenizer(batch[c], truncation="longest_first", max_length=max_length, padding=False)
                for key in keys:
                    out[_column(c, key)] = encoded[key]
            return out

        collator = PretokenizedCollator(None, tokenizer)

    if num_proc is None:
        num_proc = max(1, min(os.cpu_count() or 1, len(dataset) // 100_000))
    fingerprint = hashlib.sha256(
        json.dumps([getattr(dataset, "_fingerprint", ""), columns, keys, _tokenizer_key(model)]).encode()
    ).hexdigest()[:32]
    started = time.time()
    had_cache = _in_cache(dataset, fingerprint)
    with progress.datasets_bars():  # datasets' own bar (rows done, across its processes); none on a cache hit
        tokenized = dataset.map(
            tokenize,
            batched=True,
            batch_size=1000,
            num_proc=num_proc if num_proc > 1 else None,
            new_fingerprint=fingerprint,
            desc=f"Tokenizing {name} once" if name else "Tokenizing once",
        )
    seconds = time.time() - started
    problem = collator.mismatch(tokenized, model, columns)
    if problem:
        echo(f"Note: not pre-tokenizing ({problem}); tokenizing each batch instead.")
        return None
    return Pretokenized(tokenized, columns, seconds, had_cache)


def _end_to_end(values: list[Any], count: int) -> np.ndarray:
    """Rows of token ids end to end: numpy rows (as :mod:`~matryoshka_train.data.fetch` reads them)
    in one concatenate, lists of ints (as the dataset's own rows hold them) one int at a time."""
    if values and isinstance(values[0], np.ndarray):
        return np.concatenate(values)
    return np.fromiter(itertools.chain.from_iterable(values), dtype=np.int64, count=count)


def _in_cache(dataset: Any, fingerprint: str) -> bool:
    files = getattr(dataset, "cache_files", None) or []
    if not files:
        return False
    directory = os.path.dirname(files[0]["filename"])
    return any(name.startswith(f"cache-{fingerprint}") for name in os.listdir(directory))


class PretokenizedCollator:
    """Wraps the trainer's collator: pads pre-tokenized columns, hands everything else to it.

    The token-id columns are also reported as label-like columns (``valid_label_columns``), which
    is what sentence-transformers' samplers leave out when they compare texts."""

    def __init__(self, inner: Any, tokenizer: Any, extra_label_columns: list[str] = (),
                 pad_to_multiple_of: int | None = None, max_width: int | None = None, bags: bool = False):
        self.inner = inner
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_width = max_width  # rounding up never pads past this (the model's max_seq_length)
        self.bags = bags  # a StaticEmbedding's layout: ids end to end and each row's offset, no padding
        pad_id = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad_id if pad_id is not None else 0
        self.pad_type = getattr(tokenizer, "pad_token_type_id", 0) or 0
        self.left = getattr(tokenizer, "padding_side", "right") == "left"
        self.extra_label_columns = list(extra_label_columns)

    @property
    def valid_label_columns(self) -> list[str]:
        return list(getattr(self.inner, "valid_label_columns", None) or []) + self.extra_label_columns

    def __getattr__(self, name: str) -> Any:  # everything else comes from the wrapped collator
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        first = features[0] if features else {}
        columns = [c for c in first if not c.startswith(PREFIX) and _column(c, "input_ids") in first]
        if not columns:
            return self.inner(features)
        others = [k for k in first if not k.startswith(PREFIX) and k not in columns]
        batch = self.inner([{k: row[k] for k in others} for row in features]) if others else {}
        for column in columns:  # the dataset's column order: the loss reads anchor, positive, …
            for key, value in self.pad(features, column).items():
                batch[f"{column}_{key}"] = value
        return batch

    def pad(self, rows: list[dict[str, Any]], column: str) -> dict[str, Any]:
        """One column of a batch as the tokenizer would pad it, built with array operations (no
        per-row tensor work: this runs for every batch, in the training process). Rows read by
        :mod:`~matryoshka_train.data.fetch` bring each column whole (``token_arrays``): then no row is visited."""
        whole = getattr(rows, "token_arrays", {})
        ids_name, types_name = _column(column, "input_ids"), _column(column, "token_type_ids")
        if ids_name in whole:
            lengths, ids = whole[ids_name]
        else:
            ids = [row[ids_name] for row in rows]
            lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        if self.bags:  # StaticEmbedding.preprocess's layout: every id end to end, each row's start
            flat = ids if isinstance(ids, np.ndarray) else _end_to_end(ids, int(lengths.sum()))
            starts = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
            flat = np.array(flat, dtype=np.int64)  # a copy: rows read by column are views of read-only Arrow buffers
            return {"input_ids": torch.from_numpy(flat),
                    "offsets": torch.from_numpy(starts)}
        width = self.width(int(lengths.max()) if len(lengths) else 0)
        positions = np.arange(width)
        if self.left:
            filled = positions[None, :] >= (width - lengths)[:, None]
        else:
            filled = positions[None, :] < lengths[:, None]

        def padded(values: Any, fill: int) -> torch.Tensor:
            out = np.full((len(lengths), width), fill, dtype=np.int64)
            out[filled] = values if isinstance(values, np.ndarray) else _end_to_end(values, int(lengths.sum()))
            return torch.from_numpy(out)

        out: dict[str, Any] = {"input_ids": padded(ids, self.pad_id)}
        if types_name in rows[0]:
            types = whole[types_name][1] if types_name in whole else [row[types_name] for row in rows]
            out["token_type_ids"] = padded(types, self.pad_type)
        out["attention_mask"] = torch.from_numpy(filled.astype(np.int64))
        out["modality"] = "text"
        return out

    def width(self, longest: int) -> int:
        """The batch's padded width: its longest row, rounded up to ``pad_to_multiple_of`` if set."""
        m = self.pad_to_multiple_of
        if not m:
            return longest
        rounded = -(-longest // m) * m
        return min(rounded, max(longest, self.max_width)) if self.max_width else rounded

    def mismatch(self, dataset: Any, model: Any, columns: list[str], rows: int = 64) -> str | None:
        """Compare padding our ids with the model's own preprocessing on the first rows."""
        sample = dataset.select(range(min(rows, len(dataset))))
        features = [sample[i] for i in range(len(sample))]
        for column in columns:
            ours = self.pad(features, column)
            theirs = model.preprocess([row[column] for row in features])
            if set(ours) != set(theirs):
                return f"the model's preprocessing gives {sorted(theirs)} for '{column}', not {sorted(ours)}"
            for key, value in theirs.items():
                mine = ours[key]
                same = torch.equal(mine, value) if isinstance(value, torch.Tensor) else mine == value
                if not same:
                    return f"'{column}' {key} differs from the model's own preprocessing"
        return None
