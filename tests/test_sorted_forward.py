"""The sorted-chunk forward runs fewer padded tokens and computes the same thing."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import WORDS

from matryoshka_train.models.sorted_forward import (
    SortedChunkForward,
    install,
    loss_equality,
    plan_chunks,
    uninstall,
)


def _texts(n: int, seed: int, low: int = 1, high: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


@pytest.fixture(scope="module")
def no_dropout_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model without dropout and with room for 64 tokens, so two training runs can be
    compared weight for weight."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    bert = model[0].auto_model
    bert.config.hidden_dropout_prob = 0.0
    bert.config.attention_probs_dropout_prob = 0.0
    for module in bert.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.max_seq_length = 64
    out = tmp_path_factory.mktemp("nodropout") / "st"
    model.save(str(out))
    return out


def test_plan_chunks_covers_every_row_once_and_respects_the_budget():
    rng = random.Random(1)
    lengths = sorted([rng.randint(1, 200) for _ in range(300)], reverse=True)
    chunks = plan_chunks(lengths, max_tokens=2048)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    for start, end in chunks:
        assert end > start
        assert (end - start) * lengths[start] <= max(2048, lengths[start])
    padded = sum((end - start) * lengths[start] for start, end in chunks)
    assert padded < 0.8 * len(lengths) * lengths[0]  # far below padding everything to the longest
    assert plan_chunks([5, 5, 5], max_tokens=2048) == [(0, 3)]


def test_outputs_match_the_plain_forward_row_for_row(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu").eval()
    features = model.preprocess(_texts(40, seed=2))
    with torch.no_grad():
        plain = model({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in features.items()})
        patched = install(model, max_tokens=128)
        assert patched is not None
        chunked = model({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in features.items()})
        uninstall(model, patched)
    assert "forward" not in model.__dict__
    assert patched.run_tokens < patched.padded_tokens  # it really ran in trimmed chunks
    assert chunked["sentence_embedding"].shape == plain["sentence_embedding"].shape
    torch.testing.assert_close(chunked["sentence_embedding"], plain["sentence_embedding"], atol=1e-5, rtol=1e-4)
    mask = plain["attention_mask"].bool()
    assert chunked["token_embeddings"].shape == plain["token_embeddings"].shape
    torch.testing.assert_close(chunked["token_embeddings"][mask], plain["token_embeddings"][mask], atol=1e-5, rtol=1e-4)


def test_chunk_widths_rounded_to_a_multiple_give_the_same_outputs(tiny_model_dir):
    """round_to (the run's pad_to_multiple_of, 64 on CUDA) keeps every chunk on a few shared widths,
    capped at the batch's own width, and changes no output."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu").eval()
    features = model.preprocess(_texts(40, seed=2))
    widths = []
    with torch.no_grad():
        plain = model({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in features.items()})
        patched = install(model, max_tokens=128, min_tokens=16, round_to=8)
        inner = patched.forward

        def spy(chunk, **kwargs):
            widths.append(chunk["input_ids"].shape[1])
            return inner(chunk, **kwargs)

        patched.forward = spy
        chunked = model({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in features.items()})
        uninstall(model, patched)
    batch_width = features["input_ids"].shape[1]
    assert len(widths) > 1  # it really chunked
    assert all(w % 8 == 0 or w == batch_width for w in widths), widths
    assert max(widths) <= batch_width
    torch.testing.assert_close(chunked["sentence_embedding"], plain["sentence_embedding"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("loss_name", ["mnrl", "cached_mnrl", "cosent"])
def test_loss_and_gradients_match_the_plain_forward(tiny_model_dir, loss_name):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    if loss_name == "cosent":
        inner = losses.CoSENTLoss(model)
        columns, labels = 2, torch.rand(24)
    elif loss_name == "cached_mnrl":
        inner = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=8)
        columns, labels = 3, None
    else:
        inner = losses.MultipleNegativesRankingLoss(model)
        columns, labels = 3, None
    loss = losses.MatryoshkaLoss(model, inner, [32, 16, 8])
    features = [model.preprocess(_texts(24, seed=10 + c)) for c in range(columns)]
    result = loss_equality(model, loss, features, labels, max_tokens=96)
    assert result["loss_abs_diff"] <= 1e-5 * max(1.0, abs(result["loss_plain"]))
    assert result["grad_rel_diff"] <= 1e-4
    assert result["loss_plain"] > 0


def test_static_inputs_pass_through_untouched():
    calls = []

    def forward(features, **kwargs):
        calls.append(features)
        return {"sentence_embedding": torch.zeros(2, 3)}

    patched = SortedChunkForward(forward, max_tokens=64)
    features = {"input_ids": torch.tensor([1, 2, 3]), "offsets": torch.tensor([0, 2])}
    out = patched(features)
    assert calls == [features] and out["sentence_embedding"].shape == (2, 3)
    assert patched.padded_tokens == 0


def test_training_with_and_without_it_ends_with_the_same_weights(no_dropout_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from matryoshka_train.config import validate
    from matryoshka_train.training.entry import run

    rng = random.Random(3)
    rows = [
        {"anchor": f"q{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 50))),
         "positive": f"p{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 50)))}
        for i in range(48)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def train(sorted_forward: bool) -> tuple[dict, Path]:
        out = tmp_path / f"out-{sorted_forward}"
        config = validate({
            "model": {"name_or_path": str(no_dropout_model_dir)},
            "datasets": [{"name": "pairs", "source": {"path": str(data)}, "columns": ["anchor", "positive"]}],
            "loss": {"name": "mnrl"},
            "matryoshka": {"dims": [32, 16, 8]},
            "training": {"output_dir": str(out), "max_steps": 3, "per_device_train_batch_size": 16,
                         "learning_rate": 1e-3, "warmup_ratio": 0.0, "seed": 7,
                         "sorted_forward": sorted_forward, "forward_chunk_tokens": 128},
            "carbon": {"enabled": False},
        })
        return run(config, echo=lambda _: None), out

    with_it, out_a = train(True)
    without, out_b = train(False)
    assert with_it["padding"]["padded_tokens_run"] < with_it["padding"]["padded_tokens_plain"]
    assert with_it["padding"]["pad_share_run"] < with_it["padding"]["pad_share_plain"]
    assert without["padding"] is None
    a = SentenceTransformer(str(out_a), device="cpu").state_dict()
    b = SentenceTransformer(str(out_b), device="cpu").state_dict()
    base = SentenceTransformer(str(no_dropout_model_dir), device="cpu").state_dict()
    moved = max(float((a[k] - base[k]).abs().max()) for k in base)  # a, b also hold the learned rotation
    assert moved > 1e-3  # training changed the weights
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-4, diff
    shutil.rmtree(out_a)
    shutil.rmtree(out_b)
