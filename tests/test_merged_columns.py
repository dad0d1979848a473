"""training.merge_columns (issue 14): all of a batch's columns in one encoder call. One call per step
instead of two, the same loss and gradients (dropout off), the same trained weights, and
sentence-transformers' own function back once the block ends."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import WORDS, assert_trained_alike, three_step_run
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses import merged_forward
from sentence_transformers.sentence_transformer import losses
from sentence_transformers.sentence_transformer.losses import multiple_negatives_ranking

from matryoshka_train.losses import PerDimMatryoshkaLoss
from matryoshka_train.models import merged_columns, packed_forward


def _features(model, seed: int) -> list[dict]:
    rng = random.Random(seed)
    widths = [(1, 6), (10, 30), (10, 30)]  # short anchors, long positives and negatives
    return [model.preprocess([" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(12)])
            for lo, hi in widths]


def _step(model, loss, features) -> tuple[float, dict, int]:
    calls = []
    hook = model[0].register_forward_hook(lambda module, args, out: calls.append(1))
    try:
        model.zero_grad()
        value = loss([dict(f) for f in features], None)
        if isinstance(value, dict):
            value = sum(value.values())
        value.backward()
    finally:
        hook.remove()
    return value.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("wrapper", ["sentence-transformers", "per-dim"])
def test_one_encoder_call_per_step_and_the_same_loss_and_gradients(tiny_model_dir, packed, wrapper):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu").eval()  # no dropout: comparable numbers
    inner = losses.MultipleNegativesRankingLoss(model)
    loss = (losses.MatryoshkaLoss if wrapper == "sentence-transformers" else PerDimMatryoshkaLoss)(
        model, inner, [32, 16, 8])
    features = _features(model, seed=3)
    patched = packed_forward.install(model) if packed else None
    try:
        apart = _step(model, loss, features)
        with merged_columns.merged() as modules:
            together = _step(model, loss, features)
    finally:
        packed_forward.uninstall(model, patched)
    assert multiple_negatives_ranking.__name__ in modules
    assert apart[2] == 2 and together[2] == 1  # anchors apart, then candidates; then all at once
    assert together[0] == pytest.approx(apart[0], rel=1e-5)
    assert apart[1].keys() == together[1].keys()
    for name, grad in apart[1].items():
        torch.testing.assert_close(together[1][name], grad, atol=1e-5, rtol=1e-3, msg=name)


def test_the_original_function_is_back_after_the_block_even_after_an_error():
    original = merged_forward.embed_columns
    with pytest.raises(RuntimeError), merged_columns.merged():
        assert multiple_negatives_ranking.embed_columns is merged_columns.all_columns_at_once
        raise RuntimeError("a failed step")
    assert multiple_negatives_ranking.embed_columns is original
    assert merged_forward.embed_columns is original  # the defining module itself is never touched


def test_a_merged_run_ends_with_the_weights_of_an_unmerged_one(tiny_config, no_dropout_model_dir, tmp_path,
                                                                monkeypatch):
    merged_calls = []
    real = merged_columns.all_columns_at_once
    monkeypatch.setattr(merged_columns, "all_columns_at_once",
                        lambda *a, **k: merged_calls.append(1) or real(*a, **k))
    weights, calls = {}, {}
    for merge in (False, True):
        merged_calls.clear()
        results, weights[merge] = three_step_run(tiny_config, no_dropout_model_dir, tmp_path / f"m{merge}",
                                                 merge_columns=merge, packed_forward=True)
        calls[merge] = len(merged_calls)
        assert results["speed"]["merge_columns"] is merge and results["speed"]["packed_forward"] is True
    assert calls[False] == 0 and calls[True] >= 3  # the losses embedded through it, in every step
    assert multiple_negatives_ranking.embed_columns is merged_forward.embed_columns  # restored after the run
    assert_trained_alike(weights[True], weights[False], no_dropout_model_dir)


def test_auto_follows_the_packed_forward():
    """auto merges the columns wherever the packed forward runs (measured 1.14-1.28x on top of it on an
    H200); without it the merged call would pad the anchors to the documents' width, so off. The start
    of a run turning packed off (its kernel probe failing) takes an automatic merge with it."""
    from matryoshka_train.config import validate
    from matryoshka_train.training.speed import decide

    training = validate({"model": {"name_or_path": "x"}, "datasets": [{"name": "a", "source": {"path": "a.jsonl"}}],
                         "loss": {"name": "mnrl"}}).training
    cpu, gpu = decide(training, "cpu"), decide(training, "cuda", precision="bf16")
    assert not cpu.merge_columns and "pays only with packed_forward" in cpu.reasons["merge_columns"]
    assert gpu.packed_forward and gpu.merge_columns and "1.14-1.28x" in gpu.reasons["merge_columns"]
    assert not decide(training, "cuda", precision="fp32").merge_columns  # fp32: no varlen, so no packed
    padded = training.model_copy(update={"packed_forward": False})
    assert not decide(padded, "cuda", precision="bf16").merge_columns
    fallback = gpu.without_packed("auto: off, the probe failed")
    assert not fallback.packed_forward and not fallback.merge_columns
    assert fallback.reasons["merge_columns"] == "auto: off, because packed_forward is off"
    named = training.model_copy(update={"merge_columns": True})
    assert decide(named, "cpu").merge_columns and decide(named, "cpu").reasons["merge_columns"] == "set in the config"
    assert decide(named, "cuda", precision="bf16").without_packed("off").merge_columns  # named: kept
