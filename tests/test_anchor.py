"""Anchoring to a reference model (issue 10), and the freezing / layer-wise decay levers."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import triplet_batch
from sentence_transformers import SentenceTransformer

from matryoshka_train.config import LossConfig, MatryoshkaConfig, validate
from matryoshka_train.losses import build_loss
from matryoshka_train.losses.anchor import AnchoredLoss, distance
from matryoshka_train.models import layerwise_learning_rates
from matryoshka_train.training.entry import run

DIMS = [32, 16, 8]


def _anchored(model, name="mnrl", weight=10.0, **kwargs):
    inner = build_loss(model, LossConfig(name=name, kwargs=kwargs), MatryoshkaConfig(dims=DIMS, reduction="mean"), DIMS)
    return AnchoredLoss(model, inner, AnchoredLoss.frozen_copy_of(model), weight, "cosine")


def test_anchor_term_is_exactly_zero_for_an_untrained_copy(tiny_model_dir, data_dir):
    model = SentenceTransformer(str(tiny_model_dir))
    model.eval()  # dropout off: trained model and reference compute the same numbers
    loss = _anchored(model)
    out = loss(triplet_batch(model, data_dir), None)
    assert out["anchor"].item() == 0.0
    assert set(out) == {"dim32", "dim16", "dim8", "anchor"}  # per-dim components compose with the anchor
    assert all(out[f"dim{d}"].item() > 0 for d in DIMS)


def test_distance_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 3.0], [0.0, 1.0]])
    assert distance(a, b, "cosine").item() == pytest.approx(0.5)  # mean of (1 - 0) and (1 - 1)
    assert distance(a, b, "mse").item() == pytest.approx((1 + 9 + 0 + 1) / 4)


def test_reference_gets_no_gradient_and_is_not_a_submodule(tiny_model_dir, data_dir):
    model = SentenceTransformer(str(tiny_model_dir))
    loss = _anchored(model)
    out = loss(triplet_batch(model, data_dir), None)
    sum(out.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in loss.reference.parameters())
    assert any(p.grad is not None for p in model.parameters())
    assert not any(m is loss.reference for m in loss.modules())
    assert len(list(loss.parameters())) == len(list(model.parameters()))  # only the trained model's


def test_cached_loss_gets_the_same_gradient_as_the_plain_loss(tiny_model_dir, data_dir):
    """The anchor inside CachedMNRL's gradient cache must equal the anchor on plain MNRL."""
    grads = {}
    base_model = SentenceTransformer(str(tiny_model_dir))
    # a trained model that differs from the reference, so the anchor has a gradient
    with torch.no_grad():
        for p in base_model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    reference = SentenceTransformer(str(tiny_model_dir))
    for name, kwargs in (("mnrl", {}), ("cached_mnrl", {"mini_batch_size": 3})):
        model = copy.deepcopy(base_model)
        model.eval()
        inner = build_loss(model, LossConfig(name=name, kwargs=kwargs), MatryoshkaConfig(dims=DIMS), DIMS)
        loss = AnchoredLoss(model, inner, copy.deepcopy(reference), 10.0, "cosine")
        out = loss(triplet_batch(model, data_dir), None)
        assert out["anchor"].item() > 0
        sum(out.values()).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        grads[name + "_value"] = sum(out.values()).item()
    assert grads["mnrl_value"] == pytest.approx(grads["cached_mnrl_value"], rel=1e-5)
    torch.testing.assert_close(grads["mnrl"], grads["cached_mnrl"], rtol=1e-4, atol=1e-6)


def _mean_cosine_shift(trained_dir, base_dir, sentences):
    a = SentenceTransformer(str(trained_dir)).encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    b = SentenceTransformer(str(base_dir)).encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    return (1 - (a * b).sum(-1)).mean().item()


def test_anchored_training_moves_the_full_size_embedding_less(tiny_config, tiny_model_dir, tmp_path):
    sentences = [f"{w} river market lantern" for w in ("red", "blue", "green", "old", "new", "tall")]
    shifts = {}
    for weight in (0.0, 50.0):
        cfg = copy.deepcopy(tiny_config)
        cfg["training"].update(max_steps=8, output_dir=str(tmp_path / f"w{weight}"), learning_rate=3e-3)
        cfg["anchor"] = {"weight": weight}
        cfg["evaluation"] = {"evaluators": []}
        results = run(validate(cfg), echo=lambda _: None)
        shifts[weight] = _mean_cosine_shift(tmp_path / f"w{weight}", tiny_model_dir, sentences)
        if weight:
            assert results["anchor"]["reference_forward_s_per_step"] > 0
    assert shifts[50.0] < 0.5 * shifts[0.0]
    saved = {p.name for p in (tmp_path / "w50.0").rglob("*") if p.is_file()}
    assert saved == {p.name for p in (tmp_path / "w0.0").rglob("*") if p.is_file()}  # no reference files


@pytest.mark.parametrize(
    "name, file, columns",
    [
        ("cached_mnrl", "triplets.jsonl", ["anchor", "positive", "negative"]),
        ("CoSENTLoss", "pairs.jsonl", ["sentence1", "sentence2", "score"]),
        ("CosineSimilarityLoss", "pairs.jsonl", ["sentence1", "sentence2", "score"]),
        ("MSELoss", "distill.jsonl", ["sentence", "label"]),
    ],
)
def test_anchor_trains_with_each_supported_loss(name, file, columns, tiny_config, data_dir, tmp_path):
    import json

    cfg = tiny_config
    cfg["datasets"] = [{"name": "d", "source": {"path": str(data_dir / file)}, "columns": columns}]
    cfg["loss"] = {"name": name, **({"kwargs": {"mini_batch_size": 4}} if name == "cached_mnrl" else {})}
    cfg["anchor"] = {"weight": 5.0, "distance": "mse" if name == "MSELoss" else "cosine"}
    cfg["evaluation"] = {"evaluators": []}
    cfg["training"]["max_steps"] = 3
    run(validate(cfg), echo=lambda _: None)
    logged = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    anchors = [e["anchor"] for e in logged if e.get("event") == "train" and "anchor" in e]
    assert len(anchors) == 3 and anchors[-1] > 0  # the model moved away from the reference, and it shows


def test_freezing_the_embeddings_keeps_them_fixed(tiny_config, tiny_model_dir, tmp_path):
    tiny_config["training"].update(freeze_embeddings=True, freeze_layers=1)
    tiny_config["evaluation"] = {"evaluators": []}
    run(validate(tiny_config), echo=lambda _: None)
    before = SentenceTransformer(str(tiny_model_dir)).state_dict()
    after = SentenceTransformer(str(tmp_path / "out")).state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        if ".embeddings." in key or ".layer.0." in key:
            assert same, f"{key} changed although frozen"
    assert any(not torch.equal(before[k], after[k]) for k in before if ".layer.1." in k)


def test_layerwise_decay_rates(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir))
    rates = layerwise_learning_rates(model, 1e-3, 0.5)
    assert sorted(rates.values(), reverse=True) == pytest.approx([1e-3, 5e-4, 2.5e-4])  # layer 1, layer 0, embeddings


def test_layerwise_decay_trains(tiny_config):
    tiny_config["training"]["layerwise_lr_decay"] = 0.8
    tiny_config["evaluation"] = {"evaluators": []}
    results = run(validate(tiny_config), echo=lambda _: None)
    assert results["train"]["steps"] == 4


@pytest.mark.parametrize("name,kwargs", [("mnrl", {}), ("cached_mnrl", {"mini_batch_size": 3})])
def test_per_dim_components_add_up_to_the_plain_matryoshka_loss(name, kwargs, tiny_model_dir, data_dir):
    """The per-dim loss reports one term per dim; their sum is sentence-transformers' MatryoshkaLoss,
    with and without the anchor beside them, for plain and gradient-cache losses."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    from matryoshka_train.losses import loss_class

    model = SentenceTransformer(str(tiny_model_dir))
    model.eval()
    batch = triplet_batch(model, data_dir)
    reference = MatryoshkaLoss(model, loss_class(LossConfig(name=name).name)(model, **kwargs), DIMS)(batch, None)
    ours = build_loss(model, LossConfig(name=name, kwargs=kwargs), MatryoshkaConfig(dims=DIMS), DIMS)(batch, None)
    assert list(ours) == ["dim32", "dim16", "dim8"]
    assert sum(ours.values()).item() == pytest.approx(reference.item(), rel=1e-5)
    assert ours["dim8"].item() != pytest.approx(ours["dim32"].item())
    anchored = _anchored(model, name, **kwargs)(batch, None)
    assert set(anchored) == {"dim32", "dim16", "dim8", "anchor"}
    sum(anchored.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
