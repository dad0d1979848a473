"""Reading a batch's rows a column at a time (training.columnar_fetch): the same rows, the same
batches, the same trained weights as the dataset's own reads."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from conftest import WORDS

from matryoshka_train.data.fetch import ColumnarRows, FetchedRows, columnar_fetch, readable
from matryoshka_train.data.pretokenize import PREFIX, PretokenizedCollator, pretokenize, token_columns


def _mixed_dataset(n: int = 30, seed: int = 0):
    """Every kind of column a training set holds: texts (one null), token ids, a score, an embedding."""
    from datasets import Dataset

    rng = random.Random(seed)
    return Dataset.from_dict({
        "anchor": [None if i == 7 else f"text {i}" for i in range(n)],
        f"{PREFIX}anchor__input_ids": [[rng.randrange(1, 500) for _ in range(rng.randint(1, 12))] for _ in range(n)],
        "score": [rng.random() for _ in range(n)],
        "label": [[rng.random() for _ in range(4)] for _ in range(n)],
    })


def _assert_same_rows(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for mine, row in zip(ours, theirs):
        assert list(mine) == list(row)
        for key, value in row.items():
            if key.startswith(PREFIX):
                expected = value.tolist() if isinstance(value, np.ndarray) else value
                assert isinstance(mine[key], np.ndarray) and mine[key].tolist() == expected, key
            else:
                assert mine[key] == value, key


def test_rows_read_by_column_equal_the_datasets_own_rows():
    from torch.utils.data import ConcatDataset

    data = _mixed_dataset()
    shuffled = data.shuffle(seed=3).select(range(5, 25))  # an index mapping over the table
    indices = [4, 0, 19, 7, 7, 12]
    _assert_same_rows(ColumnarRows(shuffled).__getitems__(indices), shuffled.__getitems__(indices))

    both = ConcatDataset([data, shuffled])
    across = [31, 2, 49, 7, 30]  # rows of both datasets in one batch, in this order
    _assert_same_rows(ColumnarRows(both).__getitems__(across), [both[i] for i in across])
    batch = ColumnarRows(both).__getitems__([33, 30, 35])
    lengths, flat = batch.token_arrays[f"{PREFIX}anchor__input_ids"]
    assert lengths.tolist() == [len(r[f"{PREFIX}anchor__input_ids"]) for r in batch]
    assert flat.tolist() == [t for r in batch for t in r[f"{PREFIX}anchor__input_ids"].tolist()]


def test_a_dataset_it_cannot_read_alike_keeps_its_own_reads():
    from datasets import Dataset, Features, Image, Value
    from torch.utils.data import ConcatDataset

    data = _mixed_dataset()
    formatted = data.with_format("numpy")
    images = Dataset.from_dict({"img": [None], "a": ["x"]}, features=Features({"img": Image(), "a": Value("string")}))
    assert readable(data) and not readable(formatted) and not readable(images)
    assert ColumnarRows.wrap(formatted) is formatted
    mixed = ConcatDataset([data, formatted])
    assert ColumnarRows.wrap(mixed) is mixed  # one part it cannot read: the whole keeps its own reads
    assert isinstance(ColumnarRows.wrap(ConcatDataset([data, data])), ColumnarRows)


def test_it_survives_the_trip_to_a_dataloader_worker():
    reader = ColumnarRows(_mixed_dataset())
    again = pickle.loads(pickle.dumps(reader))
    _assert_same_rows(again.__getitems__([3, 1]), reader.__getitems__([3, 1]))


@pytest.fixture()
def tokenized(tiny_model_dir, tmp_path):
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer

    rng = random.Random(1)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"anchor": text(), "positive": text()}) + "\n" for _ in range(50)))
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    data = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    return model, pretokenize(data, model, echo=lambda _: None).dataset


@pytest.mark.parametrize("side, multiple", [("right", None), ("left", None), ("right", 8)])
def test_collated_batches_are_the_same_tensors(tokenized, side, multiple):
    model, data = tokenized
    tokenizer = model[0].tokenizer
    tokenizer.padding_side = side
    collator = PretokenizedCollator(None, tokenizer, token_columns(data), pad_to_multiple_of=multiple, max_width=64)
    indices = [9, 3, 41, 0, 17, 28, 5]
    rows = ColumnarRows(data).__getitems__(indices)
    assert isinstance(rows, FetchedRows) and rows.token_arrays
    ours, theirs = collator(rows), collator(data.__getitems__(indices))
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value) if isinstance(value, torch.Tensor) else ours[key] == value, key
    if multiple:
        assert ours["anchor_input_ids"].shape[1] % multiple == 0


def test_the_context_routes_the_trainers_dataloaders_and_restores_them(tokenized):
    import sentence_transformers.base.trainer as st_trainer

    _, data = tokenized
    original = st_trainer.DataLoader
    with columnar_fetch():
        loader = st_trainer.DataLoader(data, batch_size=4, collate_fn=list)
        assert isinstance(loader.dataset, ColumnarRows)
    assert st_trainer.DataLoader is original
    with columnar_fetch(enabled=False):
        assert st_trainer.DataLoader is original


def test_a_run_reads_by_column_and_trains_what_row_reads_train(tiny_config, no_dropout_model_dir, tmp_path,
                                                               monkeypatch):
    from conftest import assert_trained_alike, three_step_run

    calls = []
    read = ColumnarRows.__getitems__
    monkeypatch.setattr(ColumnarRows, "__getitems__", lambda self, i: calls.append(len(i)) or read(self, i))
    results, by_column = three_step_run(tiny_config, no_dropout_model_dir, tmp_path / "columns")
    assert results["speed"]["columnar_fetch"] is True
    assert len(calls) >= 3, calls  # every training batch came through it
    calls.clear()
    results, by_row = three_step_run(tiny_config, no_dropout_model_dir, tmp_path / "rows", columnar_fetch=False)
    assert results["speed"]["columnar_fetch"] is False and calls == []
    assert_trained_alike(by_column, by_row, no_dropout_model_dir)
