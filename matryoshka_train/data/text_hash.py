"""64-bit hashes of Arrow string columns, computed on whole arrays at once.

The no-duplicates sampler needs one integer per text such that equal texts get equal integers.
A hash gives that by construction (equal bytes, equal hash), and a collision between two
*different* texts only makes batching more careful (they are kept apart as if they were equal),
never wrong. With 63 bits a collision among ten million distinct texts has a probability of
about 1e-5.

How: the string array's bytes are read as 8-byte little-endian words straight from Arrow's
buffers (no Python object per text). Word ``k`` of a text is offset by ``k`` times a constant,
passed through a 64-bit finaliser (murmur3's ``fmix64``, a bijection that spreads every input bit
over the output), and the words of each text are summed with ``np.add.reduceat``; the sum and the
text's length go through the finaliser once more. Every step is a NumPy array operation, which
releases the GIL, so jobs of rows are hashed on all cores by threads. Nothing is inserted into a
hash table: on 1M-row columns (2-core machine) this took about 0.1 s per column, against 0.2-0.4 s
for Arrow's ``dictionary_encode``, which then needs another pass to merge the columns' dictionaries.
Jobs are kept to 65,536 rows so that the allocator hands one job's memory to the next: in the
virtual machines measured, touching fresh memory cost more than the arithmetic. The result does
not depend on chunking, threads or the machine (bytes are read little-endian).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

_U64 = np.uint64
_MUL1 = _U64(0xFF51AFD7ED558CCD)
_MUL2 = _U64(0xC4CEB9FE1A85EC53)
_STEP = _U64(0x9E3779B97F4A7C15)  # per-word offset: the same word at another position hashes differently
_SHIFT = _U64(33)
_NULL = _U64(0x5BD1E9955BD1E995)  # the hash of a missing value (before the 63-bit mask)
_ROWS_PER_JOB = 1 << 16  # small enough that the allocator reuses the memory of one job for the next


def _fmix(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser, in place."""
    t = h >> _SHIFT
    h ^= t
    h *= _MUL1
    np.right_shift(h, _SHIFT, out=t)
    h ^= t
    h *= _MUL2
    np.right_shift(h, _SHIFT, out=t)
    h ^= t
    return h


def _hash_rows(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Hashes of the texts ``data[offsets[i]:offsets[i+1]]`` (``data`` holds at least 8 bytes)."""
    offsets = offsets.astype(np.int64, copy=False)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    words = (lengths + 7) >> 3
    ends = np.cumsum(words)
    first = ends - words
    n_words = int(ends[-1]) if len(ends) else 0
    out = np.zeros(len(lengths), dtype=_U64)
    if n_words:
        k = np.arange(n_words, dtype=np.int64)
        k -= np.repeat(first, words)  # position of each word inside its text
        at = k * 8
        at += np.repeat(starts, words)
        # every byte offset viewed as the start of an unaligned little-endian 8-byte word; a word
        # that would run past the buffer is read from its last 8 bytes and shifted down
        limit = len(data) - 8
        past = int(np.searchsorted(at, limit, side="right"))  # word starts increase along the buffer
        shift = (at[past:] - limit).astype(_U64) * _U64(8)
        at[past:] = limit
        as_words = np.ndarray(shape=(limit + 1,), dtype="<u8", buffer=data, strides=(1,))
        w = as_words[at].astype(_U64, copy=False)
        del at
        w[past:] >>= shift
        nonempty = words > 0
        tail = (lengths[nonempty] & 7).astype(_U64)
        # keep only the text's own bytes in its last word
        w[ends[nonempty] - 1] &= np.where(tail == 0, _U64(0xFFFFFFFFFFFFFFFF), (_U64(1) << (_U64(8) * tail)) - _U64(1))
        position = k.view(_U64)
        position *= _STEP
        w += position
        del k, position
        _fmix(w)
        out[nonempty] = np.add.reduceat(w, first[nonempty])
    out += lengths.astype(_U64) * _MUL2 + _STEP  # the offset keeps the empty text off 0
    return _fmix(out)


def _binary_parts(array) -> tuple[np.ndarray, np.ndarray]:
    """(data bytes, offsets) of one Arrow string or binary array."""

    kind = array.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):
        array = array.cast(pa.large_string())  # numbers and the like: hash their text form
        kind = array.type
    offset_type = np.dtype(np.int64 if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind) else np.int32)
    _, offset_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(
        offset_buffer, dtype=offset_type, count=len(array) + 1, offset=array.offset * offset_type.itemsize
    )
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    if len(data) < 8:  # too short to read one word from: a padded copy of a few bytes
        data = np.concatenate([data, np.zeros(8, np.uint8)])
    return data, offsets


def _jobs(array, rows_per_job: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The array cut into jobs of about ``rows_per_job`` rows, each a list of (data, offsets)
    pieces. A dataset read from disk holds ~1000-row record batches: a job gathers consecutive
    ones, and its worker copies just their bytes together (:func:`_join`) right before hashing, so
    neither thousands of tiny NumPy calls nor a copy of the whole column is needed."""

    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    jobs: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    rows = 0
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        data, offsets = _binary_parts(chunk)
        for a in range(0, len(offsets) - 1, rows_per_job):
            piece = (data, offsets[a : a + rows_per_job + 1])
            if rows and rows + len(piece[1]) - 1 > rows_per_job:
                jobs.append([])
                rows = 0
            jobs[-1].append(piece)
            rows += len(piece[1]) - 1
    return [job for job in jobs if job]


def _join(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One (data, offsets) pair for a job: its pieces' bytes copied together."""
    if len(pieces) == 1:
        return pieces[0]
    datas, starts, at = [], [], 0
    for data, offsets in pieces:
        lo, hi = int(offsets[0]), int(offsets[-1])
        datas.append(data[lo:hi])
        starts.append(offsets[:-1].astype(np.int64) - lo + at)
        at += hi - lo
    joined = np.concatenate([*datas, np.zeros(8, np.uint8)])  # slack: the last word reads whole
    return joined, np.concatenate([*starts, np.asarray([at], dtype=np.int64)])


def _nulls(array) -> np.ndarray | None:
    if not array.null_count:
        return None
    return np.asarray(array.is_null(), dtype=bool)


def hash_texts(arrays: list, threads: int | None = None) -> np.ndarray:
    """63-bit hashes (int64, >= 0) of every value of the given Arrow arrays (or chunked arrays),
    concatenated in order."""
    jobs = [job for array in arrays for job in _jobs(array, _ROWS_PER_JOB)]
    sizes = [sum(len(offsets) - 1 for _, offsets in job) for job in jobs]
    hashes = np.empty(sum(sizes), dtype=_U64)  # every job writes its own slice: no concatenation
    bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()

    def work(j: int) -> None:
        hashes[bounds[j] : bounds[j + 1]] = _hash_rows(*_join(jobs[j]))

    workers = max(1, min(threads or os.cpu_count() or 1, len(jobs)))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(len(jobs))))
    else:
        for j in range(len(jobs)):
            work(j)
    start = 0
    for array in arrays:
        null_mask = _nulls(array)
        if null_mask is not None:
            hashes[start : start + len(array)][null_mask] = _NULL
        start += len(array)
    hashes >>= _U64(1)
    return hashes.view(np.int64)
