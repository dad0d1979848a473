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


def _static_model(tiny_model_dir):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    tokenizer = SentenceTransformer(str(tiny_model_dir), device="cpu")[0].tokenizer.backend_tokenizer
    torch.manual_seed(0)
    return SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=16)], device="cpu")


def test_a_static_embeddings_ids_and_offsets_equal_its_own_preprocessing(tiny_model_dir, file_dataset):
    """A StaticEmbedding sums each text's token ids in an EmbeddingBag: no padding, no mask. Its texts
    are tokenized once too, and the collator lays them out as StaticEmbedding.preprocess does, from
    the dataset's rows and from rows read a column at a time."""
    from matryoshka_train.data.fetch import ColumnarRows

    model = _static_model(tiny_model_dir)
    done = pretokenize(file_dataset(), model, echo=lambda _: None)
    assert done is not None and done.text_columns == ["anchor", "positive"]
    assert set(done.dataset.column_names) >= {f"{PREFIX}anchor__input_ids", f"{PREFIX}positive__input_ids"}
    collator = PretokenizedCollator(_PlainCollator(), model[0].tokenizer,
                                    [c for c in done.dataset.column_names if c.startswith(PREFIX)], bags=True)
    picked = list(range(0, 40, 3))
    for rows in ([done.dataset[i] for i in picked], ColumnarRows(done.dataset).__getitems__(picked)):
        batch = collator(rows)
        for column in ("anchor", "positive"):
            theirs = model.preprocess([r[column] for r in rows])
            assert set(theirs) == {"input_ids", "offsets"}
            for key in ("input_ids", "offsets"):
                assert torch.equal(batch[f"{column}_{key}"], theirs[key]), (column, key)
        assert not any(k.endswith("attention_mask") for k in batch)


def test_a_static_run_on_token_ids_trains_the_weights_of_one_that_tokenizes_per_batch(tiny_config, tiny_model_dir,
                                                                                       tmp_path):
    from sentence_transformers import SentenceTransformer

    from matryoshka_train.config import validate
    from matryoshka_train.training.entry import run

    static_dir = tmp_path / "static"
    _static_model(tiny_model_dir).save(str(static_dir))
    weights, seen = {}, []
    for pre in (True, False):
        cfg = json.loads(json.dumps(tiny_config))
        cfg["model"] = {"name_or_path": str(static_dir)}
        cfg["matryoshka"]["dims"] = [16, 8]
        cfg["evaluation"] = {"evaluators": []}
        cfg["training"].update(max_steps=3, learning_rate=0.1, pretokenize=pre, output_dir=str(tmp_path / f"o{pre}"))
        results = run(validate(cfg), echo=seen.append)
        assert bool(results["pretokenize"]) is pre
        weights[pre] = SentenceTransformer(str(tmp_path / f"o{pre}"), device="cpu").state_dict()
    start = SentenceTransformer(str(static_dir), device="cpu").state_dict()
    assert not torch.equal(weights[True]["0.embedding.weight"], start["0.embedding.weight"])  # it trained
    for key, value in weights[True].items():  # and on the same batches as the per-batch path
        assert torch.equal(value, weights[False][key]), key
    assert any(line.startswith("Tokenized tiny once") for line in seen)
