"""Benchmark: our no-duplicates batching vs sentence-transformers' NoDuplicatesBatchSampler.

Generates triplet rows with realistic duplication (each anchor on ~3 rows, as in NLI-style data;
hard negatives reused from other rows' positives), then times one epoch of batches from each
sampler in this same process and prints rows/s and the ratio ours/theirs. Raw figures go to
scripts/bench/results/sampler-<date>.json.

    python scripts/bench/sampler.py                      # 1M and 10M rows, batch 64 (ST's plain sampler at 1M only)
    python scripts/bench/sampler.py --rows 1000000 --skip-plain

Three figures for ours: the first run over a dataset (hashes every text to an id and caches the
ids under the dataset's fingerprint), any later run over the same data (a new process, a resume,
a sweep trial: the ids come from that cache), and a later epoch of one run. sentence-transformers'
hashed variant hashes the texts with datasets.map at the start of a run (the map result is cached
next to the data files, so its later runs load it; the benchmark deletes that cache before each
first run) and reuses the hashes for later epochs. Up to 2M rows each figure is the median of
--repeats runs (3), each with a fresh sampler and an empty id cache; beyond that one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

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
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure up to 2M rows (medians are reported)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for the raw JSON")
    parser.add_argument("--skip-plain", action="store_true", help="skip ST's unhashed sampler (slow at 10M)")
    args = parser.parse_args()

    import datasets
    import sentence_transformers
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    from matryoshka_train.data.sampler import (
        FastNoDuplicatesBatchSampler,
        wait_for_cache_writes,
    )

    datasets.disable_progress_bars()
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "sentence_transformers": sentence_transformers.__version__,
        "batch_size": args.batch_size,
        "runs": [],
    }
    for n in args.rows:
        repeats = args.repeats if n <= 2_000_000 else 1  # at 10M one ST epoch alone takes a minute
        print(f"\n{n:,} triplet rows, batch {args.batch_size}, median of {repeats} run(s)")
        times: dict[str, list[float]] = defaultdict(list)

        with tempfile.TemporaryDirectory() as tmp:
            # saved and read back like any file-backed dataset, so its fingerprint is stable
            make_triplets(n).save_to_disk(f"{tmp}/data")
            plain = not args.skip_plain and n <= 2_000_000  # the unhashed sampler takes minutes beyond that
            variants = [("hashed", True)] + ([("plain", False)] if plain else [])
            for r in range(repeats):
                os.environ["MTRAIN_CACHE"] = f"{tmp}/cache{r}"  # empty: the first run really encodes
                ds = datasets.load_from_disk(f"{tmp}/data")
                ours = FastNoDuplicatesBatchSampler(ds, args.batch_size, drop_last=False, seed=0)
                seconds, rows = one_epoch(ours, 0)  # hashes every text, writes the id cache
                times["first"].append(seconds)
                times["warm"].append(one_epoch(ours, 1)[0])
                if r == 0:
                    check_sample(list(iter(ours)), ds)
                wait_for_cache_writes()
                later = FastNoDuplicatesBatchSampler(
                    datasets.load_from_disk(f"{tmp}/data"), args.batch_size, drop_last=False, seed=0
                )
                times["cached"].append(one_epoch(later, 0)[0])  # a later run over the same data: ids from the cache
                for name, hashed in variants:
                    if name == "plain" and r > 0:
                        continue  # half a minute per epoch at 1M rows: once is enough
                    # datasets.map caches ST's hashes next to the data: remove them so its first run hashes
                    removed = datasets.load_from_disk(f"{tmp}/data").cleanup_cache_files()
                    theirs = NoDuplicatesBatchSampler(
                        datasets.load_from_disk(f"{tmp}/data"),
                        args.batch_size,
                        drop_last=False,
                        seed=0,
                        precompute_hashes=hashed,
                    )
                    t_cold, _ = one_epoch(theirs, 0)
                    times[f"{name}_cold"].append(t_cold)
                    times[f"{name}_warm"].append(one_epoch(theirs, 1)[0] if hashed else t_cold)
                    if hashed:  # a later run: datasets.map loads the hashes it cached
                        again = NoDuplicatesBatchSampler(
                            datasets.load_from_disk(f"{tmp}/data"),
                            args.batch_size,
                            drop_last=False,
                            seed=0,
                            precompute_hashes=True,
                        )
                        times[f"{name}_cached"].append(one_epoch(again, 0)[0])
                        times[f"{name}_cache_files_removed_before"].append(float(removed))
            med = {k: float(np.median(v)) for k, v in times.items()}
            first, cached, warm = med["first"], med["cached"], med["warm"]
            run = {
                "rows": n,
                "repeats": repeats,
                "timings_s": times,
                "ours": {"first_run_s": first, "cached_run_s": cached, "epoch_s": warm, "rows_yielded": rows},
            }
            for name, _ in variants:
                run[f"st_{name}"] = {
                    "first_epoch_s": med[f"{name}_cold"],
                    "later_epoch_s": med[f"{name}_warm"],
                    "later_run_s": med.get(f"{name}_cached", med[f"{name}_cold"]),
                }
        report["runs"].append(run)
        print(f"  {'sampler (rows/s)':<30}{'first run':>12}{'later run':>12}{'later epoch':>13}")
        print(f"  {'ours':<30}{n / first:>12,.0f}{n / cached:>12,.0f}{n / warm:>13,.0f}")
        for name, _ in variants:
            t = run[f"st_{name}"]
            print(
                f"  {'sentence-transformers ' + name:<30}{n / t['first_epoch_s']:>12,.0f}{n / t['later_run_s']:>12,.0f}"
                f"{n / t['later_epoch_s']:>13,.0f}"
            )
        for name, _ in variants:
            t = run[f"st_{name}"]
            run[f"ratio_vs_{name}"] = {
                "first_run": t["first_epoch_s"] / first,
                "later_run": t["later_run_s"] / cached,
                "later_epoch": t["later_epoch_s"] / warm,
            }
            r = run[f"ratio_vs_{name}"]
            print(
                f"  ratio ours/{name}: first run {r['first_run']:.1f}x, later runs {r['later_run']:.1f}x, "
                f"later epochs {r['later_epoch']:.1f}x"
            )

    out = args.out / f"sampler-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nraw figures: {out}")


if __name__ == "__main__":
    main()
