"""MSE distillation: the teacher's embeddings of the training sentences, computed once and kept on
disk.

A distillation run trains a student so that its embedding of a sentence matches the teacher's
(``MSELoss``). The teacher's embeddings are the labels. For millions of sentences they are too big
for memory (9M sentences x 384 float32 is about 14 GB), and too slow to recompute on every run, so:

1. **Key.** A run's labels are identified by a hash of the teacher (its settings and, for a local
   model, the bytes of its files; for a hub model, its id and revision) and of the exact sentences
   in order. Change either and the key changes, so stale labels are never reused.
2. **Chunks.** Under ``<distill.cache_dir>/<key>/`` the labels live in one ``labels.npy`` (a numpy
   array file, opened as a memory map: pages are read from disk when touched, never all at once).
   The teacher encodes ``chunk_size`` sentences at a time; each chunk is written into the file and
   flushed, and only then is ``progress.json`` advanced (written atomically) and the progress bar
   moved on. An interrupted run therefore resumes after the last complete chunk; a finished cache
   is reused without even loading the teacher.
3. **Attach.** The dataset gets a ``label`` column through ``Dataset.map`` over the memory map, in
   batches, with an explicit fingerprint (so the ``datasets`` library never hashes the memory map).
   For file-backed datasets ``map`` writes its result to an Arrow cache file batch by batch; for
   small in-memory datasets it stays in memory.

Which datasets get labels: those whose loss reads label embeddings (``MSELoss``) and that have no
``label`` column of their own; the teacher encodes their first text column (for parallel data such
as ``english, german`` the student learns to map both to the teacher's English embedding).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np

from ..config.registry import LOSSES
from ..errors import ConfigError
from ..models.loading import load_model, resolve_model_path
from ..reporting import progress
from .sources import label_column, text_columns

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset

    from ..config.schema import DatasetConfig, ModelConfig, RunConfig
    from .sources import PreparedDataset

HASH_BATCH = 10_000
LABEL_BAR = "Teacher labels"  # the progress bar's description while the teacher encodes


def takes_teacher_labels(config: RunConfig, dcfg: DatasetConfig) -> bool:
    """Does this dataset get its label embeddings from the distillation teacher?"""

    return config.distill is not None and LOSSES[config.loss_for(dcfg).name].inputs == "embedding"


# --------------------------------------------------------------------------------------------
# cache keys


def teacher_identity(tcfg: ModelConfig) -> str:
    """A stable digest of what determines the teacher's embeddings."""

    h = hashlib.sha256(tcfg.model_dump_json(exclude={"name_or_path"}).encode())
    path = Path(resolve_model_path(tcfg.name_or_path))
    if path.is_dir():  # a local model: its files are its identity (a copy elsewhere hashes the same)
        for f in sorted(p for p in path.rglob("*") if p.is_file() and "checkpoint-" not in str(p.relative_to(path))):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    else:
        h.update(f"hub:{tcfg.name_or_path}@{tcfg.revision or 'main'}".encode())
    return h.hexdigest()


def sentences_digest(texts: Callable[[int, int], Sequence[str]], n: int) -> str:
    """Digest of ``n`` sentences read in slices (``texts(start, stop)``), never all at once."""
    h = hashlib.sha256(str(n).encode())
    for start in range(0, n, HASH_BATCH):
        for text in texts(start, min(n, start + HASH_BATCH)):
            h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# the on-disk cache


@dataclass
class LabelCache:
    """``<root>/<key>/labels.npy`` (rows x dim float32) and ``progress.json``."""

    root: Path
    key: str

    @property
    def dir(self) -> Path:
        return Path(self.root) / self.key

    @property
    def array_path(self) -> Path:
        return self.dir / "labels.npy"

    @property
    def progress_path(self) -> Path:
        return self.dir / "progress.json"

    def progress(self) -> dict[str, Any]:
        try:
            return json.loads(self.progress_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def complete(self, n: int) -> bool:
        p = self.progress()
        return bool(p.get("complete")) and p.get("rows") == n and self.array_path.is_file()

    def _save_progress(self, **fields: Any) -> None:
        tmp = self.progress_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(fields), encoding="utf-8")
        os.replace(tmp, self.progress_path)  # atomic: a crash leaves the old or the new, never half

    def fill(
        self,
        texts: Callable[[int, int], Sequence[str]],
        n: int,
        dim: int,
        encode: Callable[[list[str]], np.ndarray],
        chunk_size: int,
        echo: Callable[[str], None] = print,
    ) -> int:
        """Encode rows not yet in the cache, chunk by chunk. Returns how many rows were encoded."""
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.progress()
        resumable = p.get("rows") == n and p.get("dim") == dim and self.array_path.is_file()
        if resumable:
            labels = np.lib.format.open_memmap(self.array_path, mode="r+")
            start = int(p.get("rows_done", 0))
        else:
            labels = np.lib.format.open_memmap(self.array_path, mode="w+", dtype=np.float32, shape=(n, dim))
            start = 0
            self._save_progress(rows=n, dim=dim, rows_done=0, complete=False)
        if start:
            echo(f"  resuming the label cache at row {start} of {n}")
        encoded = 0
        # the bar moves a chunk at a time (distill.chunk_size), when the chunk is safely on disk
        with progress.bar(n, LABEL_BAR, unit=" sentences", initial=start) as bar:
            for lo in range(start, n, chunk_size):
                hi = min(n, lo + chunk_size)
                emb = np.asarray(encode(list(texts(lo, hi))), dtype=np.float32)
                if emb.shape != (hi - lo, dim):
                    raise ConfigError(f"the teacher returned shape {emb.shape} for "
                                      f"{hi - lo} sentences; expected width {dim}", where="distill.teacher")
                labels[lo:hi] = emb
                labels.flush()
                encoded += hi - lo
                self._save_progress(rows=n, dim=dim, rows_done=hi, complete=hi == n)
                bar.update(hi - lo)
        if n == 0 or start >= n:
            self._save_progress(rows=n, dim=dim, rows_done=n, complete=True)
        del labels
        return encoded

    def open(self) -> np.ndarray:
        """The finished labels, memory-mapped read-only."""
        return np.load(self.array_path, mmap_mode="r")


# --------------------------------------------------------------------------------------------
# labelling datasets


class Teacher:
    """Loads the teacher only when some sentences actually need encoding (a warm cache never does)."""

    def __init__(self, tcfg: ModelConfig, batch_size: int):
        self.tcfg = tcfg
        self.batch_size = batch_size
        self._model: Any = None
        self._identity: str | None = None
        self.sentences_encoded = 0

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = teacher_identity(self.tcfg)
        return self._identity

    @property
    def model(self) -> Any:
        if self._model is None:
            try:
                self._model = load_model(self.tcfg)
            except ConfigError as exc:
                problems = [type(p)("distill.teacher" + p.where.removeprefix("model"), p.message) for p in exc.problems]
                raise ConfigError(problems) from None
        return self._model

    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, sentences: list[str]) -> np.ndarray:
        self.sentences_encoded += len(sentences)
        return self.model.encode(sentences, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)


def label_dataset(
    ds: Dataset, teacher: Teacher, cache_dir: str | Path, chunk_size: int, echo: Callable[[str], None] = print
) -> tuple[Dataset, LabelCache]:
    """``ds`` with a ``label`` column holding the teacher's embedding of its first text column."""

    column = text_columns(ds)[0]
    n = len(ds)

    def texts(start: int, stop: int) -> list[str]:
        return ds[start:stop][column]

    key = hashlib.sha256(f"{teacher.identity}:{sentences_digest(texts, n)}".encode()).hexdigest()[:20]
    cache = LabelCache(Path(cache_dir), key)
    if cache.complete(n):
        echo(f"  teacher labels for {n} sentences: reusing {cache.dir}")
    else:
        cache.fill(texts, n, teacher.dim(), teacher.encode, chunk_size, echo)
    labels = cache.open()
    dim = labels.shape[1]

    def add_labels(batch: dict[str, list], indices: list[int]) -> dict[str, Any]:
        return {"label": np.asarray(labels[indices[0] : indices[-1] + 1])}  # map's indices are contiguous

    features = ds.features.copy()
    features["label"] = datasets.List(datasets.Value("float32"), length=dim)
    labelled = ds.map(
        add_labels,
        batched=True,
        batch_size=1000,
        with_indices=True,
        features=features,
        new_fingerprint=f"mtrain-labels-{key}-{ds._fingerprint}"[:64],
        desc="attaching teacher labels",
    )
    return labelled, cache


def attach_teacher_labels(
    config: RunConfig,
    prepared: list[PreparedDataset],
    echo: Callable[[str], None] = print,
    model: Any = None,
    train: bool = True,
) -> Teacher | None:
    """Give every distilled dataset (train and eval split; only the eval split without ``train``)
    its teacher labels. ``model``: the teacher, when already loaded. Returns the teacher wrapper
    (whose ``sentences_encoded`` says how much work the cache saved), or None."""
    if config.distill is None:
        return None
    d = config.distill
    teacher = Teacher(d.teacher, d.batch_size)
    teacher._model = model
    configs = {dcfg.name: dcfg for dcfg in config.datasets}
    for p in prepared:
        if not takes_teacher_labels(config, configs[p.name]):
            continue
        if train and label_column(p.train) is None:
            echo(f"Distillation: labelling {p.name} with {d.teacher.name_or_path}")
            p.train, _ = label_dataset(p.train, teacher, d.cache_dir, d.chunk_size, echo)
        if p.eval is not None and label_column(p.eval) is None:
            p.eval, _ = label_dataset(p.eval, teacher, d.cache_dir, d.chunk_size, echo)
    teacher._model = None  # free the teacher before training
    return teacher
