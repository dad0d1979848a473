"""Every Matryoshka dim of MNRL in one pass (training.fused_loss): the same per-dim terms, gradients and
trained weights as sentence-transformers' loop over the dims, with fewer operations."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_trained_alike, three_step_run, triplet_batch

from matryoshka_train.losses.fused_mnrl import fused_terms, why_not_fused
from matryoshka_train.losses.per_dim import PerDimMatryoshkaLoss, fused_losses


def _terms_and_grads(model, batch, fused: bool, dims=(32, 16, 8), weights=(1.0, 0.5, 0.25)):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    loss = PerDimMatryoshkaLoss(model, MultipleNegativesRankingLoss(model), matryoshka_dims=list(dims),
                                matryoshka_weights=list(weights))
    model.zero_grad()
    with fused_losses([loss], fused, echo=lambda _: None) as done:
        assert len(done) == int(fused)
        out = loss([dict(f) for f in batch], None)
        sum(out.values()).backward()
    assert not loss.fused  # back to the loop after the block
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in out.items()}, grads


def test_fused_pass_gives_the_loops_terms_and_gradients(no_dropout_model_dir, data_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(no_dropout_model_dir), device="cpu")
    batch = triplet_batch(model, data_dir, n=8)
    loop_terms, loop_grads = _terms_and_grads(model, batch, fused=False)
    fused_terms_, fused_grads = _terms_and_grads(model, batch, fused=True)
    assert list(fused_terms_) == ["dim32", "dim16", "dim8"]
    for key, value in loop_terms.items():
        assert fused_terms_[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert loop_terms["dim32"] != pytest.approx(loop_terms["dim8"], rel=1e-3)  # the dims really differ
    assert set(fused_grads) == set(loop_grads)
    for name, grad in loop_grads.items():  # float32 rounding of the largest entry (a key bias's is ~0)
        err, size = float((fused_grads[name] - grad).abs().max()), float(grad.abs().max())
        assert err <= 1e-4 * size + 1e-8, (name, err, size)


@pytest.mark.parametrize("documents", [1, 2, 3])  # pairs, triplets, two hard negatives per anchor
def test_fused_terms_match_a_hand_written_loss_on_random_embeddings(documents):
    torch.manual_seed(0)
    anchors, *docs = (torch.randn(6, 12, dtype=torch.float64) for _ in range(1 + documents))
    dims, weights = [12, 4, 8], [1.0, 2.0, 0.5]  # any order: terms come back in the order asked
    got = fused_terms([anchors, *docs], dims, weights, scale=20.0)
    for term, dim, weight in zip(got, dims, weights):
        q = torch.nn.functional.normalize(anchors[:, :dim], dim=-1)
        c = torch.nn.functional.normalize(torch.cat(docs)[:, :dim], dim=-1)
        scores = q @ c.T * 20.0
        expected = torch.nn.functional.cross_entropy(scores, torch.arange(6))
        assert float(term) == pytest.approx(weight * float(expected), rel=1e-10)


def test_inner_losses_it_cannot_fuse_say_why(tiny_model_dir):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    assert why_not_fused(losses.MultipleNegativesRankingLoss(model)) is None
    assert "CoSENTLoss" in why_not_fused(losses.CoSENTLoss(model))
    assert "directions" in why_not_fused(
        losses.MultipleNegativesRankingLoss(model, directions=("query_to_doc", "doc_to_query")))
    cached = PerDimMatryoshkaLoss(model, losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=4),
                                  matryoshka_dims=[32, 16])
    notes = []
    with fused_losses([cached], True, echo=notes.append) as done:
        assert done == [] and not cached.fused
    assert notes == ["Note: fused_loss: the per-dim loop stays for CachedMultipleNegativesRankingLoss "
                     "(a gradient-cache loss)."]


@pytest.mark.parametrize("matryoshka", [
    {"rotation": {"enabled": False}},
    {"rotation": {"enabled": True}},
    {"rotation": {"enabled": True, "decouple": True}},  # small dims train the rotation only (regrad)
    {"rotation": {"enabled": False}, "n_dims_per_step": 2},
])
def test_a_fused_run_trains_what_the_loop_trains(tiny_config, no_dropout_model_dir, tmp_path, matryoshka):
    """3 steps each way: the same weights, with the learned rotation (coupled and decoupled) and with
    dims drawn per step."""
    tiny_config["matryoshka"].update(matryoshka)
    results, fused = three_step_run(tiny_config, no_dropout_model_dir, tmp_path / "fused", fused_loss=True)
    assert results["speed"]["fused_loss"] is True
    results, loop = three_step_run(tiny_config, no_dropout_model_dir, tmp_path / "loop")
    assert results["speed"]["fused_loss"] is False  # auto: off until a GPU run measures it
    assert_trained_alike(fused, loop, no_dropout_model_dir)
