"""Per-dimension evaluation extras: the dim × precision grid, aggregates over dims, BEIR-layout
retrieval, metric-name checks, and `mtrain eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from matryoshka_train.cli import main
from matryoshka_train.config import EvalConfig, validate
from matryoshka_train.errors import DataError
from matryoshka_train.evaluation import aggregate_over_dims, bytes_per_vector, metric_name_problem, quantize


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
    assert "error: training.metric_for_best_model: 'tinyy_dimmin_cosine_accuracy' is not a metric" in capsys.readouterr().err


def test_run_writes_the_grid_aggregates_and_bytes(tiny_config, write_config, tmp_path):
    tiny_config["evaluation"].update(precisions=["float32", "int8", "binary"], dim_weights=[1, 1, 2], before=False)
    assert main(["run", str(write_config(tiny_config))]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    grid = results["grid"]["tiny"]
    assert list(grid) == ["float32", "int8", "binary"]
    for precision, per_byte in (("float32", 4), ("int8", 1), ("binary", 1 / 8)):
        assert set(grid[precision]) == {"32", "16", "8"}
        for dim, cell in grid[precision].items():
            assert cell["bytes"] == int(np.ceil(int(dim) * per_byte))
            assert 0.0 <= cell["cosine_accuracy"] <= 1.0
    # the float32 row of the grid is the usual result, whose shape is unchanged
    assert grid["float32"]["16"]["cosine_accuracy"] == results["after"]["tiny"]["16"]["cosine_accuracy"]
    assert "bytes" not in results["after"]["tiny"]["16"]
    values = [results["after"]["tiny"][d]["cosine_accuracy"] for d in ("32", "16", "8")]
    agg = results["aggregates"]["tiny"]
    assert agg["dimmin"]["cosine_accuracy"] == pytest.approx(min(values))
    assert agg["dimweighted"]["cosine_accuracy"] == pytest.approx((values[0] + values[1] + 2 * values[2]) / 4)
