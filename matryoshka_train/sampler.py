"""No-duplicates batching at scale.

Same guarantee as sentence-transformers' ``NoDuplicatesBatchSampler``: no text appears twice in a
batch, across all text columns (a duplicate would be scored as its own negative by in-batch
negative losses). The difference is how it is computed:

1. **Texts become integer ids once.** All text columns are dictionary-encoded together by Arrow
   (the dataset's own storage), so equal strings get equal ids, in C++ and without Python objects
   per row. The ids are kept on the sampler for every epoch, and on disk under the dataset's
   fingerprint for the next run over the same data (:func:`cached_text_ids`).
2. **Batches are cut, then checked, on integer arrays.** Each epoch shuffles the rows (seeded by
   ``seed + epoch``), cuts the permutation into consecutive batches, and finds every row whose ids
   collide with an earlier row of the same batch with one stable sort of ``(batch, id)`` keys.
3. **Only the colliding rows are handled in Python.** They leave their batch and fill holes in
   later batches where they collide with nothing; the few that fit nowhere form batches at the
   end. With realistic duplicate rates that is a small fraction of the rows.

All yielded batches are full except possibly the last (dropped with ``drop_last``). Batches for an
epoch are a pure function of (data, seed, epoch, batch size), so resuming means skipping the first
k batches of the same list: :meth:`batches` returns it, and :attr:`skip_batches` makes the next
iteration start at batch k without producing the k before it (see
:func:`matryoshka_train.resume.fast_skip_first_batches`, which the trainer's resume goes through).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler

from .pretokenize import PREFIX as TOKEN_COLUMN_PREFIX  # token-id columns: not texts

_LABEL_COLUMNS = ("label", "score", "dataset_name")


def text_ids(dataset: object, exclude: tuple[str, ...] = _LABEL_COLUMNS) -> np.ndarray:
    """(rows, text columns) int array: equal strings anywhere in the table share an id."""
    import pyarrow as pa

    arrow = dataset.with_format("arrow")  # public view over the dataset's own Arrow storage
    columns = [c for c in dataset.column_names if c not in exclude and not c.startswith(TOKEN_COLUMN_PREFIX)]
    n = len(dataset)
    if not columns:
        return np.arange(n, dtype=np.int32)[:, None]
    chunks = []
    for c in columns:
        col = arrow[c]
        col = col.cast(pa.large_string()) if not pa.types.is_large_string(col.type) else col
        chunks.extend(col.chunks if isinstance(col, pa.ChunkedArray) else [col])
    encoded = pa.chunked_array(chunks, type=pa.large_string()).dictionary_encode().combine_chunks()
    ids = encoded.indices.to_numpy(zero_copy_only=False)  # int32: half the memory traffic of int64
    return np.ascontiguousarray(ids.reshape(len(columns), n).T)


def cache_dir() -> Path:
    """Where text ids are kept between runs: $MTRAIN_CACHE/text_ids, else ~/.cache/matryoshka_train."""
    root = os.environ.get("MTRAIN_CACHE") or Path.home() / ".cache" / "matryoshka_train"
    return Path(root) / "text_ids"


def cached_text_ids(dataset: object, exclude: tuple[str, ...] = _LABEL_COLUMNS) -> np.ndarray:
    """:func:`text_ids`, kept on disk under the dataset's fingerprint.

    A dataset read from files (what ``mtrain run`` trains on) has a fingerprint that is the same in
    every process for the same data and transforms, so a second run, a resumed run or a sweep trial
    loads its ids (megabytes, milliseconds) instead of encoding every text again. Datasets built in
    memory have no files and a random fingerprint; they are encoded and not cached."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not fingerprint or not getattr(dataset, "cache_files", None):
        return text_ids(dataset, exclude)
    key = hashlib.sha256(json.dumps([fingerprint, list(dataset.column_names), sorted(exclude)]).encode()).hexdigest()[:24]
    path = cache_dir() / f"{key}.npy"
    try:
        ids = np.load(path, mmap_mode=None, allow_pickle=False)
        if ids.ndim == 2 and len(ids) == len(dataset):
            return ids
    except (OSError, ValueError):
        pass
    ids = text_ids(dataset, exclude)
    try:  # write then rename: a crash never leaves a half-written cache file behind
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as f:
            np.save(f, ids, allow_pickle=False)
        os.replace(partial, path)
    except OSError:  # a read-only or full cache directory only costs the speed-up
        pass
    return ids


def no_duplicate_batches(ids: np.ndarray, batch_size: int, rng: np.random.Generator, drop_last: bool) -> list[np.ndarray]:
    """Split a shuffle of the rows of ``ids`` into batches with no id twice in a batch."""
    n = len(ids)
    if n == 0:
        return []
    order = rng.permutation(n)
    clashes = _clashing_positions(ids[order], batch_size)
    if len(clashes):
        kept = np.ones(n, dtype=bool)
        kept[clashes] = False
        sizes = np.bincount(np.arange(n)[kept] // batch_size, minlength=(n + batch_size - 1) // batch_size)
        batches = np.split(order[kept], np.cumsum(sizes)[:-1])
        batches = _refill(batches, order[clashes], ids, batch_size)
    else:
        batches = np.split(order, range(batch_size, n, batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    return batches


def _clashing_positions(ids_in_order: np.ndarray, batch_size: int) -> np.ndarray:
    """Positions whose row repeats an id already present earlier in the same batch.

    Fast path: sort each batch's ids (a small, cache-friendly row) and keep only batches where two
    neighbours are equal; just those few batches are walked row by row."""
    n, width = ids_in_order.shape
    # ids[order] is already a fresh array; negative ids below mark repeats and padding
    dtype = np.int32 if (n + batch_size) * width + 2 < np.iinfo(np.int32).max else np.int64
    ids = ids_in_order.astype(dtype, copy=False)
    # a text repeated inside one row is not a clash: give the repeats distinct negative ids
    for j in range(1, width):
        same = (ids[:, j : j + 1] == ids[:, :j]).any(axis=1)
        ids[same, j] = -(np.flatnonzero(same) * width + j) - 2
    pad = (-n) % batch_size
    if pad:
        filler = -np.arange(pad * width, dtype=dtype).reshape(pad, width) - 2 - n * width
        ids = np.concatenate([ids, filler])
    per_batch = np.sort(ids.reshape(-1, batch_size * width), axis=1)
    suspects = np.flatnonzero((per_batch[:, 1:] == per_batch[:, :-1]).any(axis=1))
    clashes = []
    for b in suspects.tolist():
        seen: set[int] = set()
        for pos in range(b * batch_size, min((b + 1) * batch_size, n)):
            values = ids[pos].tolist()
            if seen.isdisjoint(values):
                seen.update(values)
            else:
                clashes.append(pos)
    return np.asarray(clashes, dtype=np.int64)


def _refill(batches: list[np.ndarray], pending: np.ndarray, ids: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Place rows that clashed into the holes of batches where they clash with nothing; rows that
    fit nowhere make new batches (built greedily) after the others."""
    holes = [i for i, b in enumerate(batches) if len(b) < batch_size]
    members = {i: [int(x) for x in batches[i]] for i in holes}
    seen = {i: set(ids[batches[i]].ravel().tolist()) for i in holes}
    leftovers = []
    open_holes = list(holes)
    for row in pending.tolist():
        values = set(ids[row].tolist())
        for j, i in enumerate(open_holes):
            if seen[i].isdisjoint(values):
                members[i].append(row)
                seen[i] |= values
                if len(members[i]) == batch_size:
                    open_holes.pop(j)
                break
        else:
            leftovers.append(row)
    full = [np.asarray(members[i]) if i in members else b for i, b in enumerate(batches)]
    # the last batch may be partial; only it may stay so, so gather every partial one at the end
    complete = [b for b in full if len(b) == batch_size]
    partial_rows = [int(x) for b in full if len(b) < batch_size for x in b] + leftovers
    return complete + _greedy(partial_rows, ids, batch_size)


def _greedy(rows: list[int], ids: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """sentence-transformers' greedy pass, for the few rows left over: fill each batch in order."""
    out, remaining = [], list(rows)
    while remaining:
        batch, seen, rest = [], set(), []
        for row in remaining:
            values = set(ids[row].tolist())
            if len(batch) < batch_size and seen.isdisjoint(values):
                batch.append(row)
                seen |= values
            else:
                rest.append(row)
        out.append(np.asarray(batch))
        if len(rest) == len(remaining):  # pragma: no cover - cannot happen: a batch takes >= 1 row
            break
        remaining = rest
    return out


class FastNoDuplicatesBatchSampler(DefaultBatchSampler):
    """Drop-in for sentence-transformers' no_duplicates sampler (pass the class as ``batch_sampler``)."""

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None, seed: int = 0, **_: object):
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        self.dataset = dataset
        exclude = tuple(valid_label_columns or ()) + _LABEL_COLUMNS
        self._exclude = exclude
        self._ids: np.ndarray | None = None
        # set by a resume: the next iteration starts at this batch (then it is back to 0)
        self.skip_batches = 0

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = cached_text_ids(self.dataset, self._exclude)
        return self._ids

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([int(self.seed or 0), int(epoch)])
        return no_duplicate_batches(self.ids, self.batch_size, rng, self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        start, self.skip_batches = self.skip_batches, 0
        for batch in self.batches()[start:]:
            yield batch.tolist()

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else (n + self.batch_size - 1) // self.batch_size
