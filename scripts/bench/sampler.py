"""Benchmark: our no-duplicates batching vs sentence-transformers' NoDuplicatesBatchSampler.

Generates triplet rows with realistic duplication (each anchor on ~3 rows, as in NLI-style data;
hard negatives reused from other rows' positives), then times one epoch of batches from each
sampler in this same process and prints rows/s and the ratio ours/theirs. Raw figures go to
scripts/bench/results/sampler-<date>.json.

    python scripts/bench/sampler.py                      # 1M and 10M rows, batch 64 (ST's plain sampler at 1M only)
    python scripts/bench/sampler.py --rows 1000000 --skip-plain

Three figures for ours: the first run over a dataset (encodes every text to an id and caches the
ids under the dataset's fingerprint), any later run over the same data (a new process, a resume,
a sweep trial: the ids come from that cache), and a later epoch of one run. sentence-transformers
hashes the texts at the start of every run and reuses the hashes for later epochs. Arrow's kernels
are warmed up once per process before timing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import sys

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's package, installed or not


def make_triplets(n: int, seed: int = 0):
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    rng = np.random.default_rng(seed)

    def texts(prefix: str, ints: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(prefix, pc.cast(pa.array(ints), pa.string()), "")

    anchors = texts("the anchor sentence number ", rng.integers(0, max(1, n // 3), n))
    positives = texts("a positive passage about item ", rng.integers(0, int(n * 0.95), n))
    negatives = texts("a positive passage about item ", rng.integers(0, int(n * 0.95), n))
    return Dataset(pa.table({"anchor": anchors, "positive": positives, "negative": negatives}))


def one_epoch(sampler, epoch: int) -> tuple[float, int]:
    sampler.set_epoch(epoch)
    start = time.perf_counter()
    batches = list(iter(sampler))
    return time.perf_counter() - start, sum(len(b) for b in batches)


def check_sample(batches: list[list[int]], ds, k: int = 500) -> None:
    rows = ds.select_columns(["anchor", "positive", "negative"])
    for batch in batches[:: max(1, len(batches) // k)]:
        texts = [t for i in batch for t in set(rows[int(i)].values())]
        assert len(texts) == len(set(texts)), "duplicate text in a batch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-plain", action="store_true", help="skip ST's unhashed sampler (slow at 10M)")
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.compute as pc
    import sentence_transformers
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    from matryoshka_train.sampler import FastNoDuplicatesBatchSampler

    import datasets

    datasets.disable_progress_bars()
    pc.dictionary_encode(pa.array(["warm", "up"]))
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
              "cpus": os.cpu_count(), "sentence_transformers": sentence_transformers.__version__,
              "batch_size": args.batch_size, "runs": []}
    for n in args.rows:
        print(f"\n{n:,} triplet rows, batch {args.batch_size}")
        with tempfile.TemporaryDirectory() as tmp:
            # saved and read back like any file-backed dataset, so its fingerprint is stable
            make_triplets(n).save_to_disk(f"{tmp}/data")
            os.environ["MTRAIN_CACHE"] = f"{tmp}/cache"  # empty: the first run really encodes
            ds = datasets.load_from_disk(f"{tmp}/data")
            ours = FastNoDuplicatesBatchSampler(ds, args.batch_size, drop_last=False, seed=0)
            first, rows = one_epoch(ours, 0)  # encodes every text, writes the id cache
            warm, _ = one_epoch(ours, 1)
            check_sample(list(iter(ours)), ds)
            later = FastNoDuplicatesBatchSampler(datasets.load_from_disk(f"{tmp}/data"), args.batch_size,
                                                 drop_last=False, seed=0)
            cached, _ = one_epoch(later, 0)  # a later run over the same data: ids from the cache
            run = {"rows": n, "ours": {"first_run_s": first, "cached_run_s": cached, "epoch_s": warm,
                                       "rows_yielded": rows}}
            plain = not args.skip_plain and n <= 2_000_000  # the unhashed sampler takes minutes beyond that
            variants = [("hashed", True)] + ([("plain", False)] if plain else [])
            for name, hashed in variants:
                theirs = NoDuplicatesBatchSampler(ds, args.batch_size, drop_last=False, seed=0, precompute_hashes=hashed)
                t_cold, _ = one_epoch(theirs, 0)
                t_warm, _ = one_epoch(theirs, 1) if hashed else (t_cold, 0)
                run[f"st_{name}"] = {"first_epoch_s": t_cold, "later_epoch_s": t_warm}
        report["runs"].append(run)
        print(f"  {'sampler':<30}{'run start':>12}{'later epoch':>13}   (rows/s)")
        print(f"  {'ours, first run over the data':<30}{n / first:>12,.0f}{n / warm:>13,.0f}")
        print(f"  {'ours, any later run':<30}{n / cached:>12,.0f}{n / warm:>13,.0f}")
        for name, _ in variants:
            t = run[f"st_{name}"]
            print(f"  {'sentence-transformers ' + name:<30}{n / t['first_epoch_s']:>12,.0f}{n / t['later_epoch_s']:>13,.0f}")
        for name, _ in variants:
            t = run[f"st_{name}"]
            run[f"ratio_vs_{name}"] = {"first_run": t["first_epoch_s"] / first, "later_run": t["first_epoch_s"] / cached,
                                       "later_epoch": t["later_epoch_s"] / warm}
            r = run[f"ratio_vs_{name}"]
            print(f"  ratio ours/{name}: first run {r['first_run']:.1f}x, later runs {r['later_run']:.1f}x, "
                  f"later epochs {r['later_epoch']:.1f}x")

    out = Path(__file__).parent / "results" / f"sampler-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nraw figures: {out}")


if __name__ == "__main__":
    main()
