"""Per-dimension evaluation extras: the dim × precision grid, aggregates over dims, BEIR-layout
retrieval, metric-name checks, and `mtrain eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from matryoshka_train.cli import main
from matryoshka_train.config import validate
from matryoshka_train.evaluation import (
    aggregate_over_dims,
    bytes_per_vector,
    metric_name_problem,
    quantize,
)


def test_bytes_per_vector():
    assert [bytes_per_vector(384, p) for p in ("float32", "int8", "binary")] == [1536, 384, 48]
    assert bytes_per_vector(12, "binary") == 2  # bits are packed in whole bytes


def test_quantize_int8_and_binary_keep_shape_and_order():
    emb = np.array([[0.5, -0.2, 0.0], [-1.0, 0.4, 0.9]], dtype=np.float32)
    ranges = np.stack([emb.min(0), emb.max(0)])
    q8 = quantize(emb, "int8", ranges)
    assert q8.shape == emb.shape and q8.dtype == np.float32
    assert q8.min() >= -128 and q8.max() <= 127
    assert (np.argsort(q8[:, 0]) == np.argsort(emb[:, 0])).all()
    assert quantize(emb, "binary", ranges).tolist() == [[1, -1, -1], [-1, 1, 1]]


def test_aggregates_over_dims():
    results = {"e": {"32": {"acc": 0.9}, "16": {"acc": 0.5}, "8": {"acc": 0.4}}}
    agg = aggregate_over_dims(results, [2, 1, 1])["e"]
    assert agg["dimmean"]["acc"] == pytest.approx(0.6)
    assert agg["dimmin"]["acc"] == pytest.approx(0.4)
    assert agg["dimweighted"]["acc"] == pytest.approx((1.8 + 0.5 + 0.4) / 4)


def test_metric_names_are_checked():
    names, dims = ["tiny", "sts"], [32, 16, 8]
    assert metric_name_problem("tiny_dimmin_cosine_accuracy", names, dims, False) is None
    assert metric_name_problem("eval_sts_dim8_spearman_cosine", names, dims, False) is None
    assert metric_name_problem("tiny_int8_dim16_cosine_accuracy", names, dims, False) is None
    assert "dim 64 is not evaluated" in metric_name_problem("tiny_dim64_cosine_accuracy", names, dims, False)
    assert "needs evaluation.dim_weights" in metric_name_problem("tiny_dimweighted_cosine_accuracy", names, dims, False)
    assert "is not a metric of this run" in metric_name_problem("tiny_dimavg_cosine_accuracy", names, dims, False)


def test_check_reports_a_bad_metric_for_best_model(tiny_config, write_config, capsys):
    tiny_config["training"].update(metric_for_best_model="tinyy_dimmin_cosine_accuracy")
    assert main(["check", str(write_config(tiny_config))]) == 2
    assert (
        "error: training.metric_for_best_model: 'tinyy_dimmin_cosine_accuracy' is not a metric"
        in capsys.readouterr().err
    )


# Scripted scores per dim at the evaluations of steps 2, 4 and 6: the full dim peaks at step 2,
# the worst dim (and so min over dims) at step 4.
SCRIPT = {32: [0.9, 0.6, 0.5], 16: [0.5, 0.6, 0.4], 8: [0.1, 0.55, 0.3]}


class _Scripted:
    """Stands in for a sentence-transformers evaluator at one dim, returning scripted scores."""

    name = "tiny"
    primary_metric = "tiny_cosine_accuracy"

    def __init__(self, dim: int):
        self.dim, self.calls = dim, 0

    def __call__(self, model):
        value = SCRIPT[self.dim][self.calls]
        self.calls += 1
        return {"tiny_cosine_accuracy": value}


def test_best_checkpoint_follows_the_min_over_dims_not_the_full_dim(tiny_config, tmp_path, monkeypatch):
    """Through the real trainer with load_best_model_at_end and metric_for_best_model =
    min over dims: the full-dim score peaks at step 2, the min over dims at step 4, and the run
    keeps (and ends with the weights of) checkpoint 4."""
    from safetensors.torch import load_file

    from matryoshka_train.evaluation import EvalSpec, MatryoshkaEvaluator
    from matryoshka_train.training import plan as training
    from matryoshka_train.training.entry import run

    def scripted(config, datasets, dims):
        return MatryoshkaEvaluator([EvalSpec("tiny", "triplet", _Scripted)], dims)

    monkeypatch.setattr(training, "build_evaluator", scripted)
    tiny_config["training"].update(
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=3,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="tiny_dimmin_cosine_accuracy",
    )
    tiny_config["evaluation"].update(before=False, after=False)
    results = run(validate(tiny_config), echo=lambda _: None)
    out = tmp_path / "out"

    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {e["step"]: e for e in events if e["event"] == "eval"}
    assert max(evals, key=lambda s: evals[s]["eval_tiny_dim32_cosine_accuracy"]) == 2  # full dim would keep step 2
    assert max(evals, key=lambda s: evals[s]["eval_tiny_dimmin_cosine_accuracy"]) == 4
    assert results["train"]["best_checkpoint"].endswith("checkpoint-4")
    assert results["train"]["best_metric"] == pytest.approx(0.55)

    final, kept, full_best = (load_file(out / p / "model.safetensors") for p in (".", "checkpoint-4", "checkpoint-2"))
    key = next(k for k in final if "encoder.layer.1" in k and k.endswith("weight"))
    assert torch.equal(final[key], kept[key]) and not torch.equal(final[key], full_best[key])
