"""Datasets: read a source (local files or the hub), keep and rename the columns the loss reads,
drop empty rows (counted), cut the eval split, and check the result fits the loss.

Everything here returns ``datasets.Dataset`` objects whose columns are exactly what the
sentence-transformers trainer feeds the loss: text columns in order, then an optional
``label``/``score`` column.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
from huggingface_hub.errors import OfflineModeIsEnabled

from ..config.registry import LOSSES
from ..errors import DataError, Problem
from .filecheck import diagnose, first_bad_utf8_line

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset

    from ..config.schema import DatasetConfig, EvalSplitConfig, SourceConfig

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

    def problem(self, where: str, source: str) -> Problem:
        """What `run` and `eval` report (the one wording for every hub source)."""
        return Problem(where, f"cannot reach the hub for {source} ({self}); use local files or go online")


def read_source(src: SourceConfig, where: str) -> Dataset:
    """Read all rows of a source into a Dataset. Local files must exist and be non-empty."""
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
    if fmt in ("json", "csv", "tsv"):
        for f in files:  # the readers either fail without naming the line, or load the bad bytes
            bad = first_bad_utf8_line(f)
            if bad:
                raise DataError(bad, where=where)
    builder, kwargs = ("csv", {"delimiter": "\t"}) if fmt == "tsv" else (fmt, {})
    try:
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
    except Exception as exc:  # noqa: BLE001 - the datasets library raises many types for unreadable files
        located = diagnose(files, fmt)  # re-read the files ourselves to name the line at fault
        if located:
            raise DataError(located, where=where) from None
        raise DataError(f"cannot read {', '.join(map(str, files))} as {fmt}: {_first_line(exc)}", where=where) from None
    if len(ds) == 0:
        raise DataError(f"no rows in {', '.join(map(str, files))}", where=where)
    return ds


def hub_dataset_kwargs(src: SourceConfig) -> dict[str, Any]:
    """The pins of a hub source (revision, data_files) as ``datasets.load_dataset`` arguments."""
    kwargs: dict[str, Any] = {}
    if src.revision is not None:
        kwargs["revision"] = src.revision
    if src.data_files is not None:
        kwargs["data_files"] = src.data_files
    return kwargs


def _read_hub(src: SourceConfig, where: str) -> Dataset:
    try:
        return datasets.load_dataset(src.hub, src.subset, split=src.split, **hub_dataset_kwargs(src))
    except (ConnectionError, OfflineModeIsEnabled) as exc:
        raise HubUnavailable(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - hub clients raise many types; sorted by message below
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


def string_columns(ds: Dataset) -> list[str]:
    """The columns of ``ds`` that hold strings (texts), in order."""
    return [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]


def add_distinct_texts(ds: Dataset, columns: list[str], limit: int, seen: dict[str, None]) -> bool:
    """Add the distinct, non-blank texts of the first ``limit`` rows of ``ds`` (``columns``, row by row)
    to ``seen`` until it holds ``limit``; True once it does."""
    for row in ds.select_columns(columns).select(range(min(len(ds), limit))):
        for text in row.values():
            if isinstance(text, str) and text.strip():
                seen.setdefault(text, None)
        if len(seen) >= limit:
            return True
    return False


def source_texts(src: SourceConfig, columns: list[str] | None, limit: int, where: str) -> list[str]:
    """Up to ``limit`` distinct, non-blank texts of a source, row by row, from ``columns`` (every
    string column when None): unlabelled text, e.g. for the rotation's PCA start."""
    ds = read_source(src, where)
    if columns is None:
        columns = string_columns(ds)
        if not columns:
            raise DataError(f"{src.describe()} has no text column (it has: {', '.join(ds.column_names)}); "
                            "give a file with a text column, e.g. one JSON object per line: {\"text\": \"...\"}",
                            where=where)
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"column(s) {', '.join(missing)} not in {src.describe()}; it has: "
                        f"{', '.join(ds.column_names)}", where=where.rsplit(".", 1)[0] + ".pca_columns")
    seen: dict[str, None] = {}
    add_distinct_texts(ds, columns, limit, seen)
    if len(seen) < 2:
        raise DataError(f"{src.describe()} holds {len(seen)} distinct text(s) in {', '.join(columns)}; "
                        "the PCA start needs at least 2 (a few thousand is better)", where=where)
    return list(seen)[:limit]


def label_column(ds: Dataset) -> str | None:
    return next((c for c in ds.column_names if c in LABEL_COLUMNS), None)


def drop_empty_texts(ds: Dataset) -> tuple[Dataset, int]:
    """Drop rows where any text column is null or blank; return the rest and how many went."""
    kept, dropped = drop_empty_rows(ds)
    return kept, len(dropped)


def drop_empty_rows(ds: Dataset) -> tuple[Dataset, list[int]]:
    """Drop rows where any text column is null or blank; return the rest and the dropped row indices."""
    cols = text_columns(ds)
    if not len(ds) or not cols:
        return ds, []
    empty = [
        i for i, row in enumerate(zip(*(ds[c] for c in cols)))
        if not all(isinstance(text, str) and text.strip() for text in row)
    ]
    if not empty:
        return ds, []
    gone = set(empty)
    return ds.select([i for i in range(len(ds)) if i not in gone]), empty


def non_number_problems(ds: Dataset, loss_name: str, where: str, source: str) -> list[Problem]:
    """A score/label column that should hold numbers but has text or lists in some rows."""
    label = label_column(ds)
    if label is None or LOSSES[loss_name].inputs not in ("pair_score", "margin") or _is_number(ds, label):
        return []
    bad = [i for i, v in enumerate(ds[label]) if isinstance(v, bool) or not isinstance(v, (int, float))]
    if not bad:
        return []
    example = repr(ds[label][bad[0]])[:40]
    return [Problem(where, f"column '{label}' must hold a number in every row, but {source} has {len(bad)} that do not "
                           f"({rows_named(bad)}; e.g. {example}); fix or remove those rows")]


def rows_named(rows: list[int], limit: int = 3) -> str:
    """'row 4', 'rows 4, 9, 12 …' (1-based, as a person counts rows in the file; a CSV header is not a row)."""
    shown = ", ".join(str(r + 1) for r in rows[:limit])
    return ("row " if len(rows) == 1 else "rows ") + shown + (" …" if len(rows) > limit else "")


def non_text_problems(ds: Dataset, where: str, source: str) -> list[Problem]:
    """Text columns that hold numbers, lists or mappings instead of strings (nulls are empty texts, not this)."""
    problems = []
    for c in text_columns(ds):
        if getattr(ds.features[c], "dtype", None) in ("string", "large_string"):
            continue
        bad = [i for i, v in enumerate(ds[c]) if v is not None and not isinstance(v, str)]
        if bad:
            example = repr(ds[c][bad[0]])[:40]
            problems.append(Problem(where, f"column '{c}' must hold text, but {source} "
                                           f"has {len(bad)} row(s) that do not "
                                           f"({rows_named(bad)}; e.g. {example}); "
                                           "quote the values or pick another column "
                                           f"in {where}.columns"))
    return problems


def split_eval(ds: Dataset, split: EvalSplitConfig | None, seed: int, where: str) -> tuple[Dataset, Dataset | None]:
    if split is None:
        return ds, None
    if split.source is not None:
        return ds, None  # read separately by the caller
    n = len(ds)
    if split.first is not None:
        if split.first >= n:
            raise DataError(f"eval.first={split.first} leaves "
                            f"no training rows (the data has {n})", where=f"{where}.eval")
        return ds.select(range(split.first, n)), ds.select(range(split.first))
    size = split.count if split.count is not None else max(1, math.floor(n * (split.ratio or 0)))
    if size >= n:
        raise DataError(f"an eval split of {size} rows leaves "
                        f"no training rows (the data has {n})", where=f"{where}.eval")
    parts = ds.train_test_split(test_size=size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def prepare_dataset(
    cfg: DatasetConfig, index: int, seed: int, loss_name: str, labels_from_teacher: bool = False
) -> PreparedDataset:
    """Read, select columns, drop empties, split, limit, and check the columns fit the loss.

    Problems with the rows (non-text values, too many empty texts, scores out of range) are named
    with the file and row, and all of them are raised together. ``labels_from_teacher``: a teacher
    will add the label embeddings later (distillation), so sentences without a label column fit an
    embedding loss.
    """
    where = f"datasets.{index}"
    source = cfg.source.describe()
    ds = read_source(cfg.source, f"{where}.source")
    ds = select_columns(ds, cfg.columns, where)
    problems = non_text_problems(ds, where, source) + non_number_problems(ds, loss_name, where, source)
    if problems:
        raise DataError(problems)
    total = len(ds)
    ds, empty = drop_empty_rows(ds)
    if len(ds) == 0:
        raise DataError(f"every row has an empty text; nothing left to train on ({source})", where=where)
    if len(empty) > cfg.max_empty_ratio * total:
        raise DataError(
            f"{len(empty)} of {total} rows ({len(empty) / total:.0%}) in {source} have a null or blank text "
            f"({rows_named(empty)}), more than max_empty_ratio {cfg.max_empty_ratio:g} allows; fix the data, "
            f"or raise {where}.max_empty_ratio to drop them",
            where=where,
        )
    ds, problems = apply_score_range(ds, cfg.score_range, loss_name, where, source)
    if problems:
        raise DataError(problems)
    train, evalset = split_eval(ds, cfg.eval, seed, where)
    if cfg.eval is not None and cfg.eval.source is not None:
        evalset = read_source(cfg.eval.source, f"{where}.eval.source")
        evalset = select_columns(evalset, cfg.columns, where)
        evalset, _ = drop_empty_texts(evalset)
        evalset, _ = apply_score_range(evalset, cfg.score_range, loss_name, f"{where}.eval", cfg.eval.source.describe())
    if cfg.limit is not None and cfg.limit < len(train):
        train = train.select(range(cfg.limit))
    problems = loss_fit_problems(train, loss_name, where, label_optional=labels_from_teacher)
    if problems:
        raise DataError(problems)
    notes = [f"dropped {len(empty)} row(s) with an empty text ({rows_named(empty)})"] if empty else []
    if cfg.score_range is not None:
        notes.append(f"scores rescaled from {list(cfg.score_range)} to [0, 1]")
    return PreparedDataset(cfg.name, train, evalset, source, len(empty), notes)


# Losses that compare the score with a cosine similarity, so scores must lie in [-1, 1] (usually
# [0, 1]). CoSENT and AnglE only use the order of the scores, MarginMSE any float margin.
COSINE_SCORE_LOSSES = {"CosineSimilarityLoss"}


def apply_score_range(
    ds: Dataset, score_range: tuple[float, float] | None, loss_name: str, where: str, source: str
) -> tuple[Dataset, list[Problem]]:
    """Check the score/label column of a scored dataset, and rescale it when score_range is given.

    Scores must be finite numbers; with ``score_range: [low, high]`` each must lie in it and is
    mapped to [0, 1]; without one, losses in :data:`COSINE_SCORE_LOSSES` need scores in [-1, 1].
    """
    label = label_column(ds)
    if label is None or LOSSES[loss_name].inputs not in ("pair_score", "margin") or not _is_number(ds, label):
        return ds, []
    scores = np.asarray(ds[label], dtype=float)
    bad = np.flatnonzero(~np.isfinite(scores)).tolist()
    if bad:
        return ds, [Problem(where, f"column '{label}' in {source} has {len(bad)} score(s) that are not numbers "
                                   f"({rows_named(bad)}); fix or remove those rows")]
    if score_range is not None:
        low, high = score_range
        out = np.flatnonzero((scores < low) | (scores > high)).tolist()
        if out:
            return ds, [Problem(where, f"{len(out)} score(s) in {source} lie outside score_range [{low:g}, {high:g}] "
                                       f"({rows_named(out)}: {scores[out[0]]:g}); "
                                       f"correct {where}.score_range or the data")]
        rescaled = ((scores - low) / (high - low)).tolist()
        return ds.remove_columns(label).add_column(label, rescaled), []
    if loss_name in COSINE_SCORE_LOSSES:
        out = np.flatnonzero((scores < -1) | (scores > 1)).tolist()
        if out:
            return ds, [Problem(where, f"{loss_name} compares scores with a cosine similarity, which lies in [-1, 1], "
                                       f"but {source} has scores from {scores.min():g} to {scores.max():g} "
                                       f"({rows_named(out)}); set {where}.score_range to their scale (e.g. "
                                       f"[{np.floor(scores.min()):g}, "
                                       f"{np.ceil(scores.max()):g}]) to rescale them to [0, 1], "
                                       "or use CoSENTLoss, which takes any float")]
    return ds, []


def loss_fit_problems(ds: Dataset, loss_name: str, where: str, label_optional: bool = False) -> list[Problem]:
    """Do this dataset's columns give the loss what it reads? One problem per mismatch.
    ``label_optional``: a missing label embedding column is fine (a teacher provides it)."""
    spec = LOSSES[loss_name]
    texts, label = text_columns(ds), label_column(ds)
    has = ", ".join(ds.column_names)
    need = f"{loss_name} needs {spec.column_rule()}; the data has: {has}. Select/rename with {where}.columns"
    bad_types = [c for c in texts if getattr(ds.features[c], "dtype", None) not in ("string", "large_string")]
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


def label_widths(ds: Dataset) -> dict[int, list[int]]:
    """Every label-embedding width in the data -> the rows that have it (in row order of first use)."""
    label = label_column(ds)
    if label is None or not _is_vector(ds, label):
        return {}
    widths: dict[int, list[int]] = {}
    for i, value in enumerate(ds[label]):
        widths.setdefault(len(value) if value is not None else 0, []).append(i)
    return widths


def long_text_counts(
    ds: Dataset, tokenizer: Any, max_tokens: int, sample: int = 5000, seed: int = 0
) -> tuple[int, int, int]:
    """How many rows have a text longer than ``max_tokens`` tokens (they will be truncated).

    Counts every row of small datasets and a seeded sample of ``sample`` rows of large ones.
    Returns (rows over the limit, rows counted, longest text in tokens).
    """
    rows = list(range(len(ds)))
    if len(rows) > sample:
        rows = sorted(random.Random(seed).sample(rows, sample))
    picked = ds.select(rows) if len(rows) < len(ds) else ds
    over = [False] * len(rows)
    longest = 0
    for c in text_columns(picked):
        texts = [t if isinstance(t, str) else "" for t in picked[c]]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]
        longest = max([longest, *lengths])
        over = [o or n > max_tokens for o, n in zip(over, lengths)]
    return sum(over), len(rows), longest
