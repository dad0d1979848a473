"""No-duplicates batching at scale.

Same guarantee as sentence-transformers' ``NoDuplicatesBatchSampler``: no text appears twice in a
batch, across all text columns (a duplicate would be scored as its own negative by in-batch
negative losses). The difference is how it is computed:

1. **Texts become integer ids once.** Every text of every text column is hashed to a 63-bit
   integer straight from the dataset's Arrow buffers by vectorised NumPy code on all cores
   (:mod:`matryoshka_train.text_hash`), so equal strings get equal ids without a Python object
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

import contextlib
import gc
import hashlib
import itertools
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler

from .pretokenize import PREFIX as TOKEN_COLUMN_PREFIX
from .text_hash import hash_texts

_LABEL_COLUMNS = ("label", "score", "dataset_name")


def text_ids(dataset: object, exclude: tuple[str, ...] = _LABEL_COLUMNS) -> np.ndarray:
    """(rows, text columns) int64 array: equal strings anywhere in the table share an id.

    The ids are 63-bit hashes of the texts (:mod:`matryoshka_train.text_hash`): equal texts always
    get equal ids; two different texts sharing one (about 1e-5 at ten million texts) would only be
    kept out of each other's batches."""

    arrow = dataset.with_format("arrow")  # public view over the dataset's own Arrow storage
    columns = [c for c in dataset.column_names if c not in exclude and not c.startswith(TOKEN_COLUMN_PREFIX)]
    n = len(dataset)
    if not columns:
        return np.arange(n, dtype=np.int64)[:, None]
    return np.ascontiguousarray(hash_texts([arrow[c] for c in columns]).reshape(len(columns), n).T)


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
    key = hashlib.sha256(
        json.dumps(["hash63", fingerprint, list(dataset.column_names), sorted(exclude)]).encode()
    ).hexdigest()[:24]
    path = cache_dir() / f"{key}.npy"
    try:
        # mapped, not read: no copy, and the page cache is shared by every process of a run
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
        if ids.ndim == 2 and len(ids) == len(dataset):
            return ids
    except (OSError, ValueError):
        pass
    ids = text_ids(dataset, exclude)
    # written by a thread while the first epoch's batches are built; the interpreter waits for it
    # at exit, and wait_for_cache_writes() waits for it on demand
    writer = threading.Thread(target=_write_ids, args=(path, ids), name="mtrain-text-id-cache")
    writer.start()
    _PENDING_WRITES.append(writer)
    return ids


_PENDING_WRITES: list[threading.Thread] = []


def _write_ids(path: Path, ids: np.ndarray) -> None:
    partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.partial")
    try:  # write then rename: a crash never leaves a half-written cache file behind
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as f:
            np.save(f, ids, allow_pickle=False)
        os.replace(partial, path)
    except OSError:  # a read-only or full cache directory only costs the speed-up
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


def wait_for_cache_writes() -> None:
    """Block until every text-id cache file started by this process is on disk."""
    while _PENDING_WRITES:
        _PENDING_WRITES.pop().join()


def no_duplicate_batches(
    ids: np.ndarray, batch_size: int, rng: np.random.Generator, drop_last: bool
) -> list[np.ndarray]:
    """Split a shuffle of the rows of ``ids`` into batches with no id twice in a batch."""
    return _split(*no_duplicate_layout(ids, batch_size, rng, drop_last))


def _split(rows: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    return np.split(rows, np.cumsum(sizes)[:-1]) if len(sizes) else []


def no_duplicate_layout(
    ids: np.ndarray, batch_size: int, rng: np.random.Generator, drop_last: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`no_duplicate_batches` as one array of rows in batch order and the batch sizes (no
    array per batch: at a million rows that split alone costs as much as finding the clashes)."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = rng.permutation(n)
    clashes = _clashing_positions(np.take(ids, order, axis=0), batch_size)  # take: 3x faster than ids[order]
    if len(clashes):
        kept = np.ones(n, dtype=bool)
        kept[clashes] = False
        sizes = np.bincount(np.flatnonzero(kept) // batch_size, minlength=(n + batch_size - 1) // batch_size)
        rows, sizes = _refill(order[kept], sizes, order[clashes], ids, batch_size)
    else:
        rows = order
        sizes = np.full((n + batch_size - 1) // batch_size, batch_size, dtype=np.int64)
        sizes[-1] = n - batch_size * (len(sizes) - 1)
    if drop_last and len(sizes) and sizes[-1] < batch_size:
        rows, sizes = rows[: len(rows) - sizes[-1]], sizes[:-1]
    return rows, sizes


def _clashing_positions(ids_in_order: np.ndarray, batch_size: int) -> np.ndarray:
    """Positions whose row repeats an id already present earlier in the same batch.

    Fast path: sort each batch's ids (a small, cache-friendly row) and keep only batches where two
    neighbours are equal; just those few batches are walked row by row."""
    n, width = ids_in_order.shape
    # ids[order] is already a fresh array; negative ids below mark repeats and padding
    small = ids_in_order.dtype.itemsize <= 4 and (n + batch_size) * width + 2 < np.iinfo(np.int32).max
    dtype = np.int32 if small else np.int64
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


def _refill(
    kept: np.ndarray, sizes: np.ndarray, pending: np.ndarray, ids: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Place rows that clashed into the holes of batches where they clash with nothing; rows that
    fit nowhere make new batches (built greedily) after the others.

    ``kept`` holds the rows that stayed, batch after batch, ``sizes`` how many each batch kept.
    Returns the rows of every batch in order and their sizes: the full batches first (in their
    original order), then the greedy ones."""
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    holes = np.flatnonzero(sizes < batch_size).tolist()
    members = {i: kept[bounds[i] : bounds[i + 1]].tolist() for i in holes}
    seen = {i: set(ids[members[i]].ravel().tolist()) for i in holes}
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
    # full batches keep their place: runs of untouched batches are slices of ``kept``; a hole that
    # filled up is its members; the last batch may be partial and only it may stay so, so the rows
    # of every batch still short go to the greedy pass at the end
    pieces, partial_rows, run_start = [], [], 0
    for i in holes:
        pieces.append(kept[bounds[run_start] : bounds[i]])
        if len(members[i]) == batch_size:
            pieces.append(np.asarray(members[i], dtype=kept.dtype))
        else:
            partial_rows.extend(members[i])
        run_start = i + 1
    pieces.append(kept[bounds[run_start] :])
    tail = _greedy(partial_rows + leftovers, ids, batch_size)
    rows = np.concatenate(pieces + [np.asarray(b, dtype=kept.dtype) for b in tail])
    full = (len(rows) - sum(len(b) for b in tail)) // batch_size
    return rows, np.asarray([batch_size] * full + [len(b) for b in tail], dtype=np.int64)


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
    """Drop-in for sentence-transformers' no_duplicates sampler: no text appears twice in a batch,
    computed on 63-bit text ids instead of Python strings (see the module docstring).

    Batches are a pure function of (data, seed, epoch, batch size), so a resume can skip batches in
    constant time. The text ids are cached on disk by the dataset's fingerprint.

    Args:
        dataset: The training ``datasets.Dataset``.
        batch_size: Rows per batch.
        drop_last: Drop the last, smaller batch of an epoch.
        valid_label_columns: Columns that are labels, not texts (never compared).
        generator: Unused; accepted for the trainer's sampler signature.
        seed: Seed of the epoch permutation.

    Example:
        ::

            from sentence_transformers import SentenceTransformerTrainingArguments

            from matryoshka_train.data import FastNoDuplicatesBatchSampler

            args = SentenceTransformerTrainingArguments(output_dir="out", batch_sampler=FastNoDuplicatesBatchSampler)
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        drop_last: bool,
        valid_label_columns=None,
        generator=None,
        seed: int = 0,
        **_: object,
    ):
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
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

    def layout(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's rows in batch order and the batch sizes (:func:`no_duplicate_layout`)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([int(self.seed or 0), int(epoch)])
        return no_duplicate_layout(self.ids, self.batch_size, rng, self.drop_last)

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        return _split(*self.layout(epoch))

    def __iter__(self) -> Iterator[list[int]]:
        start, self.skip_batches = self.skip_batches, 0
        rows, sizes = self.layout()
        bounds = np.concatenate([[0], np.cumsum(sizes)])[start:].tolist()
        if len(bounds) < 2:
            return
        first = bounds[0]
        rows = rows[first:].tolist()  # one conversion, not one per batch
        # tens of thousands of new lists would set off several full garbage collections, each walking
        # every object of the process (models, datasets); lists of ints hold no cycles to collect
        collecting = gc.isenabled()
        gc.disable()
        try:
            lists = [rows[a - first : b - first] for a, b in itertools.pairwise(bounds)]
        finally:
            if collecting:
                gc.enable()
        del rows
        yield from lists

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else (n + self.batch_size - 1) // self.batch_size
