"""Tokenize once: token ids cached with the dataset, padded per batch exactly as the model would."""

from __future__ import annotations

import json
import random
from typing import ClassVar

import pytest
import torch
from conftest import WORDS

from matryoshka_train.data.pretokenize import PREFIX, PretokenizedCollator, pretokenize


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))

    return [{"anchor": f"a{i} {text()}", "positive": text(), "score": rng.random()} for i in range(n)]


@pytest.fixture()
def file_dataset(tmp_path):
    from datasets import load_dataset

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(40)))
    return lambda: load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))


def test_padded_ids_equal_the_models_own_preprocessing(tiny_model_dir, file_dataset):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    done = pretokenize(file_dataset(), model, echo=lambda _: None)
    assert done is not None and done.text_columns == ["anchor", "positive"]  # the score is a label
    rows = [done.dataset[i] for i in range(0, 40, 3)]
    collator = PretokenizedCollator(_PlainCollator(), model[0].tokenizer, [c for c in rows[0] if c.startswith(PREFIX)])
    batch = collator(rows)
    assert torch.equal(batch["label"], torch.tensor([r["score"] for r in rows]))
    for column in ("anchor", "positive"):
        theirs = model.preprocess([r[column] for r in rows])
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert torch.equal(batch[f"{column}_{key}"], theirs[key]), (column, key)
    keys = [k for k in batch if k.endswith("_input_ids")]
    assert keys == ["anchor_input_ids", "positive_input_ids"]  # the loss reads columns in this order
    assert any(c.startswith(PREFIX) for c in collator.valid_label_columns)  # samplers ignore the id columns


def test_the_next_run_over_the_same_data_reads_the_cache(tiny_model_dir, file_dataset):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    first = pretokenize(file_dataset(), model, echo=lambda _: None)
    second = pretokenize(file_dataset(), model, echo=lambda _: None)
    assert not first.cached and second.cached
    assert second.dataset[5] == first.dataset[5]
    model.max_seq_length = 8  # another max length: other ids, so not the same cache entry
    third = pretokenize(file_dataset(), model, echo=lambda _: None)
    assert not third.cached
    assert len(third.dataset[0][f"{PREFIX}anchor__input_ids"]) == 8


def test_a_model_whose_preprocessing_differs_is_tokenized_per_batch(tiny_model_dir, file_dataset):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    plain = model.preprocess
    model.preprocess = lambda texts, **kw: plain([t.upper() + " extra" for t in texts], **kw)
    notes = []
    assert pretokenize(file_dataset(), model, echo=notes.append) is None
    assert notes and "not pre-tokenizing" in notes[0]


@pytest.mark.parametrize("sampler", ["auto", "no_duplicates", "batch_sampler"])
def test_training_runs_on_token_ids_with_every_sampler(tiny_config, sampler):
    from matryoshka_train.config import validate
    from matryoshka_train.training.entry import run

    tiny_config["training"]["batch_sampler"] = sampler
    tiny_config["evaluation"] = {"evaluators": []}
    printed = []
    results = run(validate(tiny_config), echo=printed.append)
    assert any(line.startswith("Tokenized tiny once") for line in printed)
    assert results["pretokenize"]["tiny"]["seconds"] >= 0
    assert results["train"]["steps"] == 4 and results["train"]["final_loss"] > 0


class _PlainCollator:
    """Stands in for sentence-transformers' collator for the non-text columns."""

    valid_label_columns: ClassVar[list[str]] = ["label", "score"]

    def __call__(self, features):
        return {"label": torch.tensor([f["score"] for f in features])}
