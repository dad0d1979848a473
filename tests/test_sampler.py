"""The vectorised no-duplicates sampler: the same guarantee as sentence-transformers', per seed."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from matryoshka_train.data.sampler import (
    FastNoDuplicatesBatchSampler,
    no_duplicate_batches,
    text_ids,
)


def _dataset(n: int, anchor_pool: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset.from_dict({
        "anchor": [f"a{i}" for i in rng.integers(0, anchor_pool, n)],
        "positive": [f"p{i}" for i in range(n)],
        "negative": [f"p{i}" for i in rng.integers(0, n, n)],  # hard negatives reuse other rows' positives
        "label": rng.random(n).tolist(),
    })


def _assert_no_duplicates(batches, ds):
    rows = ds.select_columns(["anchor", "positive", "negative"])
    for batch in batches:
        texts = [t for i in batch for t in set(rows[int(i)].values())]
        assert len(texts) == len(set(texts)), "a text appears twice in one batch"


def test_text_ids_are_equal_exactly_for_equal_strings():
    ds = Dataset.from_dict({"a": ["x", "y", "x"], "b": ["y", "z", "w"], "label": [0.1, 0.2, 0.3]})
    ids = text_ids(ds)
    assert ids.shape == (3, 2)
    assert ids[0, 0] == ids[2, 0] and ids[0, 1] == ids[1, 0]  # 'x' twice, 'y' across columns
    assert len({ids[0, 0], ids[1, 1], ids[2, 1], ids[0, 1]}) == 4
    sub = ds.select([2, 0])  # views with an indices mapping are read in their own order
    assert text_ids(sub)[0, 1] != text_ids(sub)[1, 1]


@pytest.mark.parametrize("batch_size, pool", [(8, 50), (16, 400), (32, 5000)])
def test_batches_have_no_duplicates_and_cover_every_row_once(batch_size, pool):
    ds = _dataset(2000, pool)
    batches = no_duplicate_batches(text_ids(ds), batch_size, np.random.default_rng(3), drop_last=False)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(ds)))
    assert all(len(b) == batch_size for b in batches[:-2])  # only the tail may be partial
    _assert_no_duplicates(batches, ds)


def test_a_text_repeated_inside_one_row_is_not_a_clash():
    ds = Dataset.from_dict({"anchor": [f"s{i}" for i in range(64)], "positive": [f"s{i}" for i in range(64)]})
    batches = no_duplicate_batches(text_ids(ds), 16, np.random.default_rng(0), drop_last=False)
    assert [len(b) for b in batches] == [16, 16, 16, 16]


def test_deterministic_per_seed_and_epoch_and_resumable():
    ds = _dataset(1000, 100)
    a = FastNoDuplicatesBatchSampler(ds, batch_size=16, drop_last=True, valid_label_columns=["label"], seed=7)
    b = FastNoDuplicatesBatchSampler(ds, batch_size=16, drop_last=True, valid_label_columns=["label"], seed=7)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    b.skip_batches = 5
    assert list(b) == list(a)[5:]
    assert all(len(x) == 16 for x in first) and len(first) <= len(a)


def test_multi_column_label_is_ignored_and_trainer_uses_it(tiny_config):
    from matryoshka_train.config import validate
    from matryoshka_train.training.entry import run

    tiny_config["training"]["batch_sampler"] = "auto"
    tiny_config["evaluation"] = {"evaluators": []}
    results = run(validate(tiny_config), echo=lambda _: None)
    assert results["batch_sampler"] == "no_duplicates_fast"
    assert results["train"]["steps"] == 4


def test_text_ids_are_cached_on_disk_by_dataset_fingerprint(tmp_path, monkeypatch):
    """A dataset read from files gets the same fingerprint in every run, so the next run over it
    loads its ids instead of encoding every text again."""
    from datasets import load_dataset

    from matryoshka_train.data import sampler

    monkeypatch.setenv("MTRAIN_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(f'{{"anchor": "a{i % 7}", "positive": "p{i}"}}\n' for i in range(50)))

    def read():
        return load_dataset("json", data_files=str(data), split="train", cache_dir=str(tmp_path / "hf"))

    first = sampler.cached_text_ids(read())
    sampler.wait_for_cache_writes()  # written in the background while the first epoch is built
    assert len(list((tmp_path / "cache" / "text_ids").glob("*.npy"))) == 1

    def must_not_encode(*args, **kwargs):
        raise AssertionError("encoded again instead of loading the cached ids")

    monkeypatch.setattr(sampler, "text_ids", must_not_encode)
    again = sampler.cached_text_ids(read())  # a fresh Dataset object, as in a new process
    np.testing.assert_array_equal(first, again)
    with pytest.raises(AssertionError):  # other data: a new fingerprint, so no stale ids
        sampler.cached_text_ids(read().select(range(10)))
    in_memory = Dataset.from_dict({"anchor": ["x", "y"], "positive": ["y", "z"]})
    with pytest.raises(AssertionError):  # in-memory datasets (random fingerprints) are never cached
        sampler.cached_text_ids(in_memory)


def test_sampler_benchmark_script_runs_both_samplers_and_writes_ratios(tmp_path):
    """scripts/bench/sampler.py at a toy size: it must time ours and both sentence-transformers
    samplers in one run, check a sample of our batches for duplicates, and write the raw JSON."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run(
        [sys.executable, "scripts/bench/sampler.py", "--rows", "3000", "--repeats", "1", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio ours/hashed: first run" in proc.stdout
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("sampler-*.json")]
    (run,) = report["runs"]
    assert run["rows"] == 3000 and run["ours"]["rows_yielded"] == 3000
    for name in ("hashed", "plain"):
        assert set(run[f"ratio_vs_{name}"]) == {"first_run", "later_run", "later_epoch"}
        assert all(r > 0 for r in run[f"ratio_vs_{name}"].values())
