"""A small MTEB STS task over tests/data/sts-pairs.jsonl, defined the way a user defines one for
local data (an mteb AbsTaskSTS subclass with its own TaskMetadata and load_data). Used by
tests/test_mteb_eval.py as ``tests/mteb_tasks/local_sts.py:LocalSTS``; nothing here needs the hub."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, DatasetDict
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

ROWS = Path(__file__).resolve().parents[1] / "data" / "sts-pairs.jsonl"


class LocalSTS(AbsTaskSTS):
    metadata = TaskMetadata(
        name="LocalSTS",
        description="64 scored sentence pairs shipped with the tests.",
        dataset={"path": "local/sts-pairs", "revision": "1"},  # never read: load_data below reads the file
        type="STS",
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="cosine_spearman",
    )
    min_score = 0
    max_score = 1

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        rows = [json.loads(line) for line in ROWS.read_text(encoding="utf-8").splitlines() if line.strip()]
        self.dataset = DatasetDict({"test": Dataset.from_list(rows)})
        self.data_loaded = True


class LocalSTSHalves(AbsTaskSTS):
    """The same rows as two subsets ("first" and "second" half), like a multilingual MTEB task."""

    metadata = TaskMetadata(
        name="LocalSTSHalves",
        description="The 64 test pairs split into two subsets of 32.",
        dataset={"path": "local/sts-pairs-halves", "revision": "1"},
        type="STS",
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs={"first": ["eng-Latn"], "second": ["deu-Latn"]},
        main_score="cosine_spearman",
    )
    min_score = 0
    max_score = 1

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        rows = [json.loads(line) for line in ROWS.read_text(encoding="utf-8").splitlines() if line.strip()]
        half = len(rows) // 2
        self.dataset = {
            "first": DatasetDict({"test": Dataset.from_list(rows[:half])}),
            "second": DatasetDict({"test": Dataset.from_list(rows[half:])}),
        }
        self.data_loaded = True
