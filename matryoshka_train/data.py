"""Datasets: read a source (local files or the hub), keep and rename the columns the loss reads,
drop empty rows (counted), cut the eval split, and check the result fits the loss.

Everything here returns ``datasets.Dataset`` objects whose columns are exactly what the
sentence-transformers trainer feeds the loss: text columns in order, then an optional
``label``/``score`` column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DataError, Problem
from .losses import LOSSES

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset

    from .config import DatasetConfig, EvalSplitConfig, SourceConfig

LABEL_COLUMNS = ("label", "score")
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


@dataclass
class PreparedDataset:
    """A dataset ready for training, with what happened to it on the way (for `mtrain check`)."""

    name: str
    train: Dataset
    eval: Dataset | None
    source: str
    dropped_empty: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return list(self.train.column_names)


class HubUnavailable(Exception):
    """The hub cannot be reached (we are offline); `mtrain check` reports the source as unverified."""


def read_source(src: SourceConfig, where: str) -> Dataset:
    """Read all rows of a source into a Dataset. Local files must exist and be non-empty."""
    import datasets

    if src.hub:
        return _read_hub(src, where)
    files = [Path(p) for p in src.path or []]
    for f in files:
        if not f.is_file():
            raise DataError(f"file not found: {f} (relative paths start at {Path.cwd()})", where=where)
        if f.stat().st_size == 0:
            raise DataError(f"file is empty: {f}", where=where)
    fmt = src.format or FORMATS.get(files[0].suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {files[0].name}; set format: json, csv, tsv or parquet", where=where
        )
    builder, kwargs = ("csv", {"delimiter": "\t"}) if fmt == "tsv" else (fmt, {})
    try:
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
    except Exception as exc:  # the datasets library raises many types for unreadable files
        raise DataError(f"cannot read {', '.join(map(str, files))} as {fmt}: {_first_line(exc)}", where=where) from None
    if len(ds) == 0:
        raise DataError(f"no rows in {', '.join(map(str, files))}", where=where)
    return ds


def _read_hub(src: SourceConfig, where: str) -> Dataset:
    import datasets
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        return datasets.load_dataset(src.hub, src.subset, split=src.split)
    except (ConnectionError, OfflineModeIsEnabled) as exc:
        raise HubUnavailable(str(exc)) from None
    except Exception as exc:
        text = _first_line(exc)
        if any(k in text.lower() for k in ("connection", "offline", "resolve", "network", "couldn't reach")):
            raise HubUnavailable(text) from None
        raise DataError(f"cannot load hub dataset {src.describe()}: {text}", where=where) from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def select_columns(ds: Dataset, columns: dict[str, str] | None, where: str) -> Dataset:
    """Keep (and rename) the configured columns, in the configured order."""
    if columns is None:
        return ds
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(
            f"column(s) {', '.join(missing)} not in the data; it has: {', '.join(ds.column_names)}",
            where=f"{where}.columns",
        )
    ds = ds.select_columns(list(columns))
    renames = {src: dst for src, dst in columns.items() if src != dst}
    return ds.rename_columns(renames) if renames else ds


def text_columns(ds: Dataset) -> list[str]:
    return [c for c in ds.column_names if c not in LABEL_COLUMNS]


def label_column(ds: Dataset) -> str | None:
    return next((c for c in ds.column_names if c in LABEL_COLUMNS), None)


def drop_empty_texts(ds: Dataset) -> tuple[Dataset, int]:
    """Drop rows where any text column is null or blank; return the rest and how many went."""
    cols = text_columns(ds)

    def keep(row: dict[str, Any]) -> bool:
        return all(isinstance(row[c], str) and row[c].strip() for c in cols)

    kept = ds.filter(keep, desc="dropping empty texts") if len(ds) else ds
    return kept, len(ds) - len(kept)


def split_eval(ds: Dataset, split: EvalSplitConfig | None, seed: int, where: str) -> tuple[Dataset, Dataset | None]:
    if split is None:
        return ds, None
    if split.source is not None:
        return ds, None  # read separately by the caller
    n = len(ds)
    if split.first is not None:
        if split.first >= n:
            raise DataError(f"eval.first={split.first} leaves no training rows (the data has {n})", where=f"{where}.eval")
        return ds.select(range(split.first, n)), ds.select(range(split.first))
    size = split.count if split.count is not None else max(1, math.floor(n * (split.ratio or 0)))
    if size >= n:
        raise DataError(f"an eval split of {size} rows leaves no training rows (the data has {n})", where=f"{where}.eval")
    parts = ds.train_test_split(test_size=size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def prepare_dataset(
    cfg: DatasetConfig, index: int, seed: int, loss_name: str, labels_from_teacher: bool = False
) -> PreparedDataset:
    """Read, select columns, drop empties, split, limit, and check the columns fit the loss.

    ``labels_from_teacher``: a teacher will add the label embeddings later (distillation), so
    sentences without a label column fit an embedding loss."""
    where = f"datasets.{index}"
    ds = read_source(cfg.source, f"{where}.source")
    ds = select_columns(ds, cfg.columns, where)
    ds, dropped = drop_empty_texts(ds)
    if len(ds) == 0:
        raise DataError(f"every row has an empty text; nothing left to train on ({cfg.source.describe()})", where=where)
    train, evalset = split_eval(ds, cfg.eval, seed, where)
    if cfg.eval is not None and cfg.eval.source is not None:
        evalset = read_source(cfg.eval.source, f"{where}.eval.source")
        evalset = select_columns(evalset, cfg.columns, where)
        evalset, _ = drop_empty_texts(evalset)
    if cfg.limit is not None and cfg.limit < len(train):
        train = train.select(range(cfg.limit))
    problems = loss_fit_problems(train, loss_name, where, label_optional=labels_from_teacher)
    if problems:
        raise DataError(problems)
    notes = [f"dropped {dropped} row(s) with an empty text"] if dropped else []
    return PreparedDataset(cfg.name, train, evalset, cfg.source.describe(), dropped, notes)


def loss_fit_problems(ds: Dataset, loss_name: str, where: str, label_optional: bool = False) -> list[Problem]:
    """Do this dataset's columns give the loss what it reads? One problem per mismatch.
    ``label_optional``: a missing label embedding column is fine (a teacher provides it)."""
    spec = LOSSES[loss_name]
    texts, label = text_columns(ds), label_column(ds)
    has = ", ".join(ds.column_names)
    need = f"{loss_name} needs {spec.column_rule()}; the data has: {has}. Select/rename with {where}.columns"
    bad_types = [c for c in texts if ds.features[c].dtype not in ("string", "large_string")]
    problems = []
    if bad_types:
        problems.append(Problem(where, f"column(s) {', '.join(bad_types)} are not text; {need}"))
    ok = {
        "in_batch": len(texts) >= 2 and label is None,
        "pair_score": len(texts) == 2 and label is not None and _is_number(ds, label),
        "embedding": len(texts) >= 1
        and ((label is not None and _is_vector(ds, label)) or (label_optional and label is None)),
        "margin": len(texts) >= 3 and label is not None,
        "triplet": len(texts) == 3 and label is None,
    }[spec.inputs]
    if not ok:
        problems.append(Problem(where, need))
    return problems


def _is_number(ds: Dataset, column: str) -> bool:
    return getattr(ds.features[column], "dtype", "") in ("float32", "float64", "int32", "int64", "float16")


def _is_vector(ds: Dataset, column: str) -> bool:
    feature = ds.features[column]
    return type(feature).__name__ in ("Sequence", "List", "LargeList")


def label_width(ds: Dataset) -> int | None:
    """Width of the label embeddings (MSE distillation), from the first row."""
    label = label_column(ds)
    if label is None or not _is_vector(ds, label):
        return None
    return len(ds[0][label])
