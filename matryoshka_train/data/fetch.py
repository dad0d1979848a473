"""How the training DataLoader reads a batch's rows: from Arrow, a column at a time.

torch's DataLoader hands each batch's indices to the dataset and the rows it gets back to the
collator. A ``datasets.Dataset`` answers by turning every cell into Python objects: for a
pre-tokenized column that is one Python ``int`` per token (some 100,000 per batch of 128 triplets
of 16-256 tokens), which the collator then turns back into an array. And torch's ``ConcatDataset``,
through which sentence-transformers trains several datasets at once, has no batch read at all: it
asks for the rows one by one. With 0 DataLoader workers the training process does all of this
between two steps; on a GPU whose step is bound by the host, the GPU waits (docs/benchmarks.md,
finding 6).

:class:`ColumnarRows` answers the same request with one Arrow ``take`` per dataset in the batch.
The token-id columns (``pretokenize``'s ``__tok__…`` columns) come back as numpy views into one flat
buffer per column, with no Python ints; every other column is converted a column at a time, to the
same Python values the dataset's own rows hold. Each token column also comes whole (row lengths,
ids end to end: :class:`FetchedRows`), from which the collator
(:class:`~matryoshka_train.data.pretokenize.PretokenizedCollator`) pads it without visiting the
rows. The batches are the same tensors either way (``tests/test_fetch.py``).

A dataset this cannot read the same way (one with a format set, or a column whose values are
decoded, such as images) keeps the dataset's own reads.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import sentence_transformers.base.trainer as st_trainer
from datasets import Dataset
from datasets.features.features import List, Value, require_decoding
from torch.utils.data import ConcatDataset
from torch.utils.data import Dataset as TorchDataset

from .pretokenize import PREFIX


def _parts(dataset: Any) -> list[Any]:
    """The ``datasets.Dataset`` s a ``ConcatDataset`` joins, or ``[dataset]``."""
    return list(dataset.datasets) if isinstance(dataset, ConcatDataset) else [dataset]


def readable(dataset: Any) -> bool:
    """Whether :class:`ColumnarRows` reads ``dataset`` (a ``datasets.Dataset``) as its own rows read:
    no format set and no column whose values the dataset decodes."""
    if not isinstance(dataset, Dataset) or dataset.format.get("type") is not None:
        return False
    return not any(require_decoding(feature) for feature in dataset.features.values())


def _token_column(name: str, feature: Any) -> bool:
    return (
        name.startswith(PREFIX)
        and isinstance(feature, List)
        and isinstance(feature.feature, Value)
        and feature.feature.dtype.startswith(("int", "uint"))
    )


class ColumnarRows(TorchDataset):
    """A map-style dataset over one ``datasets.Dataset`` or a ``ConcatDataset`` of them, whose
    ``__getitems__`` (what the DataLoader calls once per batch) reads the rows column by column.

    Rows are dicts, as the dataset's own are; a token-id column's value is a numpy integer array
    (a view into the batch's buffer) instead of a list of ints."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        parts = _parts(dataset)
        self.ends = list(itertools.accumulate(len(part) for part in parts))
        self.arrow = [part.with_format("arrow") for part in parts]
        self.tokens = [{n for n, f in part.features.items() if _token_column(n, f)} for part in parts]

    @staticmethod
    def wrap(dataset: Any) -> Any:
        """``dataset`` read through :class:`ColumnarRows` where every part is :func:`readable`, else as is."""
        parts = _parts(dataset)
        return ColumnarRows(dataset) if parts and all(readable(p) for p in parts) else dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        if len(self.ends) == 1:
            return self._rows(0, indices)
        if any(i < 0 for i in indices):
            return [self.dataset[i] for i in indices]
        by_part: dict[int, tuple[list[int], list[int]]] = {}
        for position, index in enumerate(indices):
            part = bisect.bisect_right(self.ends, index)
            local = index - (self.ends[part - 1] if part else 0)
            positions, locals_ = by_part.setdefault(part, ([], []))
            positions.append(position)
            locals_.append(local)
        if len(by_part) == 1:  # every sampler of ours and sentence-transformers' draws a batch from one dataset
            ((part, (_, locals_)),) = by_part.items()
            return self._rows(part, locals_)
        rows: list[Any] = [None] * len(indices)
        for part, (positions, locals_) in by_part.items():
            for position, row in zip(positions, self._rows(part, locals_)):
                rows[position] = row
        return rows

    def _rows(self, part: int, indices: list[int]) -> FetchedRows:
        table: pa.Table = self.arrow[part][indices]
        tokens = self.tokens[part]
        columns: dict[str, list[Any]] = {}
        arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in table.column_names:
            column = table.column(name)
            buffers = _list_buffers(column) if name in tokens else None
            if buffers is None:
                columns[name] = column.to_pylist()
                continue
            offsets, values = buffers
            arrays[name] = (np.diff(offsets), values[offsets[0]:offsets[-1]])
            columns[name] = [values[start:end] for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        names = list(columns)
        return FetchedRows((dict(zip(names, values)) for values in zip(*columns.values())), arrays)


class FetchedRows(list):
    """A batch's rows (a list of dicts) that also holds each token-id column whole:
    ``token_arrays[name] = (row lengths, the rows' ids end to end)``, which the collator pads
    without visiting the rows."""

    def __init__(self, rows: Any, token_arrays: dict[str, tuple[np.ndarray, np.ndarray]]):
        super().__init__(rows)
        self.token_arrays = token_arrays


def _list_buffers(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray] | None:
    """A list-of-integers column's offsets and values as numpy arrays (None where a row or id is null)."""
    array = column.combine_chunks()
    if array.null_count or array.values.null_count:
        return None
    return array.offsets.to_numpy(), array.values.to_numpy(zero_copy_only=False)


class _ColumnarDataLoader(st_trainer.DataLoader):
    """torch's DataLoader over :meth:`ColumnarRows.wrap` of its dataset."""

    def __init__(self, dataset: Any, *args: Any, **kwargs: Any):
        super().__init__(ColumnarRows.wrap(dataset), *args, **kwargs)


@contextlib.contextmanager
def columnar_fetch(enabled: bool = True) -> Iterator[None]:
    """Around ``trainer.train()``: the DataLoaders the sentence-transformers trainer builds read
    their rows through :class:`ColumnarRows` (``enabled=False``: a no-op)."""
    if not enabled:
        yield
        return
    original = st_trainer.DataLoader
    st_trainer.DataLoader = _ColumnarDataLoader
    try:
        yield
    finally:
        st_trainer.DataLoader = original
