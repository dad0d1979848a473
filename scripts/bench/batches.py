"""Benchmark: the input pipeline alone, one batch after another, as the training process makes them.

With 0 DataLoader workers the training process itself reads each batch's rows, collates them and
(on a GPU) pins and copies them, between two steps; on a GPU whose step is bound by the host this
time is lost (docs/benchmarks.md, finding 6). This times that work alone, through a torch
DataLoader over the same batches of indices for every side, in this one process:

* ``theirs``: sentence-transformers' own path, what the plain script runs: the dataset's rows
  and its data collator, which tokenizes every batch;
* ``ours:rows``: the texts tokenized once (``pretokenize``), the dataset's own rows, our collator
  (:class:`~matryoshka_train.data.pretokenize.PretokenizedCollator` inside
  :class:`~matryoshka_train.models.host_reads.HostLengthsCollator`), i.e. ``training.columnar_fetch: false``;
* ``ours``: the same, with the rows read from Arrow a column at a time
  (:class:`~matryoshka_train.data.fetch.ColumnarRows`, ``training.columnar_fetch`` on: the default);
* ``ours:texts``: a run whose data is not pre-tokenized (prompts, a model whose own preprocessing
  differs; a StaticEmbedding until 2026-11-28): the texts read a column at a time, then
  sentence-transformers' collator tokenizes them as in ``theirs``.

``--model static`` runs every side on a StaticEmbedding over the same tokenizer (the static recipe's
kind of model: ids end to end with each row's offset, no padding).

Several datasets (``--datasets K``, the data split in K) go through torch's ``ConcatDataset``, as the
sentence-transformers trainer trains a dataset dict; every batch comes from one of them. Each side's
first pass is untimed (warm-up); the figure is the median of ``--repeats`` passes over all batches.
It checks that ``ours`` and ``ours:rows`` build identical batches and that both hold the token ids
the model's own tokenizer gives (``theirs``). Raw figures: scripts/bench/results/batches-<…>.json.

    python scripts/bench/batches.py                         # word-level texts of 16-256 words, batch 128
    python scripts/bench/batches.py --words 5 40 --batch 512
    python scripts/bench/batches.py --device cuda           # also pin each batch and copy it to the GPU
    python scripts/bench/batches.py --model static --words 5 40 --batch 2048 --batches 10   # the static recipe

The work measured runs on the host, so a CPU machine measures it; ``--device cuda`` adds the pinned
copy a GPU run makes. It is not a training-speed figure: how much of it a GPU step hides depends on
the step (``scripts/bench/train.py`` reports the wait for the next batch inside training).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this checkout's package, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

COLUMNS = ("anchor", "positive", "negative")


def make_data(root: Path, rows: int, words: tuple[int, int], seed: int) -> Path:
    rng = random.Random(seed)
    path = root / "rows.jsonl"
    with path.open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({c: benchlib.word_text(rng, *words) for c in COLUMNS}) + "\n")
    return path


def index_batches(sizes: list[int], batch: int, count: int, seed: int) -> list[list[int]]:
    """``count`` batches of global indices into the concatenation of datasets of ``sizes``, each
    batch from one dataset (round robin), rows drawn without replacement within a dataset."""
    rng = np.random.default_rng(seed)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    orders = [rng.permutation(n) for n in sizes]
    taken = [0] * len(sizes)
    out = []
    for i in range(count):
        k = i % len(sizes)
        if taken[k] + batch > sizes[k]:
            orders[k], taken[k] = rng.permutation(sizes[k]), 0
        out.append((starts[k] + orders[k][taken[k]:taken[k] + batch]).tolist())
        taken[k] += batch
    return out


def loader(dataset: Any, batches: list[list[int]], collate: Any, pin: bool) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=0, pin_memory=pin)


def one_pass(dl: Any, device: str) -> tuple[float, list[dict]]:
    import torch

    kept = []
    began = time.perf_counter()
    for batch in dl:
        if device == "cuda":
            batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if len(kept) < 4:
            kept.append(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began, kept


def same_batches(a: list[dict], b: list[dict], keys: str = "") -> bool:
    import torch

    for x, y in zip(a, b):
        for key, value in x.items():
            if keys not in key or not isinstance(value, torch.Tensor):
                continue
            other = y.get(key)
            if not isinstance(other, torch.Tensor) or not torch.equal(value.cpu(), other.cpu()):
                return False
    return bool(a) and len(a) == len(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, nargs=2, default=[16, 256], metavar=("MIN", "MAX"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="batches per pass")
    parser.add_argument("--datasets", type=int, nargs="+", default=[1, 4], help="split the data in K datasets")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=None, help="rows generated (default: enough for 2 passes, >= 2000)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--pad-to-multiple-of", type=int, default=None, help="ours' widths (64: CUDA default)")
    parser.add_argument("--model", choices=["tiny", "static"], default="tiny",
                        help="static: a StaticEmbedding over the same tokenizer (ids end to end, offsets, no padding)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import datasets
    import sentence_transformers
    import torch
    import transformers
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from torch.utils.data import ConcatDataset

    from matryoshka_train.data.fetch import ColumnarRows
    from matryoshka_train.data.pretokenize import PretokenizedCollator, pretokenize, token_columns
    from matryoshka_train.models.host_reads import HostLengthsCollator

    logging.disable(logging.WARNING)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    pin = args.device == "cuda"
    tmp = Path(tempfile.mkdtemp(prefix="bench-batches-"))
    max_len = min(args.words[1] + 2, benchlib.MAX_POSITIONS)
    model = benchlib.build_model("tiny", tmp / "model", max_seq_length=max_len)
    static = args.model == "static"
    if static:  # the static recipe's kind of model: an EmbeddingBag over the tokenizer, no padding
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding

        model = SentenceTransformer(modules=[StaticEmbedding(model[0].tokenizer.backend_tokenizer, embedding_dim=64)],
                                    device="cpu")
    rows_needed = args.batch * args.batches * 2
    data = make_data(tmp, args.rows or max(rows_needed, 2000), tuple(args.words), args.seed)
    full = load_dataset("json", data_files=str(data), split="train", cache_dir=str(tmp / "hf-cache"))
    trainer_args = SentenceTransformerTrainingArguments(output_dir=str(tmp / "out"), report_to="none", use_cpu=not pin)
    theirs_collator = SentenceTransformerTrainer(model=model, args=trainer_args, train_dataset=full).data_collator
    print(f"input pipeline: {args.words[0]}-{args.words[1]} words, batch {args.batch}, {args.batches} batches per "
          f"pass, device {args.device}{' (pinned copies)' if pin else ''}")

    results: dict[str, Any] = {}
    for k in args.datasets:
        parts = [full.shard(num_shards=k, index=i, contiguous=True) for i in range(k)]
        tokenized = [pretokenize(p, model, echo=lambda _: None).dataset for p in parts]
        theirs_data = parts[0] if k == 1 else ConcatDataset(parts)
        ours_data = tokenized[0] if k == 1 else ConcatDataset(tokenized)
        batches = index_batches([len(p) for p in parts], args.batch, args.batches, args.seed)
        ours_collator = HostLengthsCollator(PretokenizedCollator(
            theirs_collator, model[0].tokenizer, token_columns(tokenized[0]),
            pad_to_multiple_of=args.pad_to_multiple_of, max_width=max_len, bags=static,
        ))
        sides = {
            "theirs": loader(theirs_data, batches, theirs_collator, pin),
            "ours:rows": loader(ours_data, batches, ours_collator, pin),
            "ours": loader(ColumnarRows.wrap(ours_data), batches, ours_collator, pin),
            "ours:texts": loader(ColumnarRows.wrap(theirs_data), batches, theirs_collator, pin),
        }
        assert isinstance(sides["ours"].dataset, ColumnarRows), "the columnar reader refused this dataset"
        times: dict[str, list[float]] = {s: [] for s in sides}
        kept: dict[str, list[dict]] = {}
        for dl in sides.values():
            one_pass(dl, args.device)  # warm-up
        for _ in range(args.repeats):
            for s, dl in sides.items():  # interleaved, so drift hits every side alike
                seconds, kept[s] = one_pass(dl, args.device)
                times[s].append(seconds)
        ms = {s: 1000 * float(np.median(t)) / args.batches for s, t in times.items()}
        checks = {
            "ours_equals_ours_rows": same_batches(kept["ours"], kept["ours:rows"]),
            "ours_texts_equals_theirs": same_batches(kept["ours:texts"], kept["theirs"]),
            "token_ids_equal_theirs": same_batches(kept["ours"], kept["theirs"], keys="input_ids")
            if not args.pad_to_multiple_of else None,
        }
        label = f"{k} dataset{'s' if k > 1 else ''}"
        print(f"{label}: ms per batch — theirs {ms['theirs']:.2f} · ours:rows {ms['ours:rows']:.2f} · ours "
              f"{ms['ours']:.2f}  ->  ours vs theirs {ms['theirs'] / ms['ours']:.2f}x, ours vs ours:rows "
              f"{ms['ours:rows'] / ms['ours']:.2f}x; not pre-tokenized: ours:texts {ms['ours:texts']:.2f} "
              f"({ms['theirs'] / ms['ours:texts']:.2f}x theirs)")
        print(f"  same batches (ours, ours:rows): {'PASS' if checks['ours_equals_ours_rows'] else 'FAIL'}; "
              f"(ours:texts, theirs): {'PASS' if checks['ours_texts_equals_theirs'] else 'FAIL'}"
              + ("" if checks["token_ids_equal_theirs"] is None else
                 f"; token ids equal theirs: {'PASS' if checks['token_ids_equal_theirs'] else 'FAIL'}"))
        results[str(k)] = {
            "ms_per_batch": ms,
            "seconds_per_pass": times,
            "ratio_ours_vs_theirs": ms["theirs"] / ms["ours"],
            "ratio_ours_vs_ours_rows": ms["ours:rows"] / ms["ours"],
            "ratio_ours_texts_vs_theirs": ms["theirs"] / ms["ours:texts"],
            "checks": checks,
        }

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"batches-{args.device}-{'static-' if static else ''}words{args.words[0]}-{args.words[1]}-b{args.batch}"
    path = args.out / f"{stem}-{dt.date.today().isoformat()}.json"
    record = {
        "benchmark": "batches",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__, "datasets": datasets.__version__},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "code": benchlib.code_version(REPO),
        "results": results,
    }
    path.write_text(json.dumps(record, indent=1))
    print(f"raw results: {path}")
    failed = [k for k, r in results.items() if not (r["checks"]["ours_equals_ours_rows"]
                                                    and r["checks"]["ours_texts_equals_theirs"])
              or r["checks"]["token_ids_equal_theirs"] is False]
    if failed:
        sys.exit(f"batches differ for --datasets {', '.join(failed)}")


if __name__ == "__main__":
    main()
