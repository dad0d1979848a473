"""The vectorised text hash behind the no-duplicates sampler: equal texts, equal ids; different
texts, different ids; the same ids however the column is chunked, sliced or split over threads."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from matryoshka_train.data import text_hash
from matryoshka_train.data.text_hash import hash_texts


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "ab\u00e9\u4e2d "  # 1-, 2- and 3-byte UTF-8 characters
    # lengths around the 8-byte word boundaries, where the tail masking matters
    lengths = [0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 64, 200]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.choice(lengths))) for _ in range(n)]
    return texts + texts[: n // 10]  # some exact repeats


def _assert_same_partition(values: list, hashes: np.ndarray) -> None:
    """Equal values got equal hashes and different values different hashes."""
    assert len(values) == len(hashes)
    first_hash: dict = {}
    for value, h in zip(values, hashes.tolist()):
        assert first_hash.setdefault(value, h) == h, f"{value!r} got two different hashes"
    assert len(set(first_hash.values())) == len(first_hash), "two different texts share a hash"


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.binary(), pa.large_binary()])
def test_equal_texts_and_only_equal_texts_share_a_hash(kind):
    texts = _texts(6000)
    values = [t.encode() for t in texts] if "binary" in str(kind) else texts
    array = pa.array(values, type=kind)
    hashes = hash_texts([array])
    assert hashes.dtype == np.int64 and (hashes >= 0).all()
    _assert_same_partition(values, hashes)
    if kind == pa.string():  # the same bytes hash the same whatever the Arrow type
        assert (hash_texts([pa.array(values, type=pa.large_string())]) == hashes).all()


def test_chunking_slicing_threads_and_job_size_do_not_change_hashes(monkeypatch):
    array = pa.array(_texts(3000, seed=1))
    reference = hash_texts([array], threads=1)
    monkeypatch.setattr(text_hash, "_ROWS_PER_JOB", 50)  # many jobs, joined from many chunks
    chunked = pa.chunked_array([array.slice(i, 37) for i in range(0, len(array), 37)] + [array.slice(0, 0)])
    assert (hash_texts([chunked], threads=2) == reference).all()
    assert (hash_texts([array.slice(11, 500)], threads=2) == reference[11:511]).all()
    # several columns are concatenated in order: a text in two columns gets one hash
    both = hash_texts([array, chunked])
    assert (both[: len(array)] == both[len(array) :]).all()


def test_missing_values_hash_alike_and_not_like_empty_text():
    array = pa.array(["a", None, "", None, "a", "tiny"])
    h = hash_texts([array]).tolist()
    assert h[1] == h[3] and h[0] == h[4]
    assert len({h[0], h[1], h[2], h[5]}) == 4


def test_short_buffers_and_numbers_are_hashed():
    assert len(set(hash_texts([pa.array(["a", "b", "ab"])]).tolist())) == 3  # data buffer under 8 bytes
    numbers = hash_texts([pa.array([1, 2, 1])])  # not text: hashed by their text form
    assert numbers[0] == numbers[2] != numbers[1]
    assert len(hash_texts([pa.array([], type=pa.string())])) == 0


def test_hashes_are_stable_across_versions_and_machines():
    """The ids are cached on disk between runs: the function must not drift. If this fails on
    purpose, change the cache key's version tag in sampler.cached_text_ids too."""
    h = hash_texts([pa.array(["", "hello", "a much longer text than one word"])]).tolist()
    assert h == [5643066927113148277, 1200000777225548804, 8897505423116661753]
