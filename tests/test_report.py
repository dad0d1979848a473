"""`mtrain eval` on a BEIR-layout directory and `mtrain report`: PNG plots that open and a
Markdown report, for one run and for several directories compared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from matryoshka_train.cli import main
from matryoshka_train.errors import DataError
from matryoshka_train.evaluation.beir import read_beir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def beir_dir(tmp_path: Path) -> Path:
    """A tiny corpus in the BEIR layout: 12 documents, 6 queries, each judged against 1-2 documents."""
    root = tmp_path / "tinybeir"
    (root / "qrels").mkdir(parents=True)
    topics = ["river mountain", "coffee engine", "violin garden", "winter harbor", "pepper rocket", "tiger lantern"]
    docs = [{"_id": f"d{i}", "title": topics[i % 6].split()[0], "text": f"{topics[i % 6]} "
                                                                        f"story number {i}"} for i in range(12)]
    queries = [{"_id": f"q{i}", "text": f"about {t}"} for i, t in enumerate(topics)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    lines = (
        ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(6)] + [f"q{i}\td{i + 6}\t2" for i in range(3)]
    )
    lines += ["q5\td0\t0", "q9\td1\t1"]  # a zero judgement (not relevant) and one for an unknown query
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_beir_layout_is_read_into_ir_inputs(beir_dir):
    data = read_beir(beir_dir, "test", "evaluation.evaluators.0.beir")
    assert set(data.queries) == {f"q{i}" for i in range(6)}
    assert len(data.corpus) == 12 and data.corpus["d0"] == "river river mountain story number 0"
    assert data.relevant["q0"] == {"d0", "d6"} and data.relevant["q5"] == {"d5"}
    assert data.skipped == 1
    assert len(read_beir(beir_dir, "test", "x", limit=2).queries) == 2


def test_beir_problems_name_the_file(beir_dir):
    with pytest.raises(DataError, match=r"no judgements file .*dev.tsv; splits here: test"):
        read_beir(beir_dir, "dev", "evaluation.evaluators.0.beir")
    (beir_dir / "queries.jsonl").write_text('{"_id": "q0", "text": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"queries.jsonl:2: not valid JSON"):
        read_beir(beir_dir, "test", "evaluation.evaluators.0.beir")


def test_eval_config_needs_a_source_or_beir(write_config, capsys, tiny_model_dir):
    path = write_config({"evaluation": {"evaluators": [{"type": "triplet", "dataset": "tiny"}]}})
    assert main(["eval", str(tiny_model_dir), "--config", str(path)]) == 2
    assert "evaluation.evaluators.0.dataset: an eval-only config has no datasets" in capsys.readouterr().err


def _png_ok(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    import matplotlib.image

    assert matplotlib.image.imread(str(path)).shape[0] > 200


def test_eval_and_report_end_to_end(tiny_config, tiny_model_dir, write_config, beir_dir, data_dir, tmp_path, capsys):
    # a short training run with a precision grid and evaluation during training
    tiny_config["training"].update(eval_strategy="steps", eval_steps=2)
    tiny_config["evaluation"].update(precisions=["float32", "int8", "binary"], dim_weights=[1, 1, 2])
    run_dir = tmp_path / "out"
    assert main(["run", str(write_config(tiny_config))]) == 0
    _grid_and_aggregates_are_right(json.loads((run_dir / "results.json").read_text()))

    # the base model evaluated on its own, on a BEIR directory and a triplet file
    eval_cfg = write_config(
        {
            "matryoshka": {"dims": [32, 16, 8]},
            "evaluation": {
                "precisions": ["float32", "binary"],
                "evaluators": [
                    {
                        "type": "triplet",
                        "name": "tiny",
                        "source": {"path": str(data_dir / "triplets.jsonl")},
                        "limit": 16,
                    },
                    {"type": "retrieval", "beir": str(beir_dir), "split": "test"},
                ],
            },
        }
    )
    eval_dir = tmp_path / "base-eval"
    assert main(["eval", str(tiny_model_dir), "--config", str(eval_cfg), "--output", str(eval_dir)]) == 0
    results = json.loads((eval_dir / "results.json").read_text())
    assert results["dims"] == [32, 16, 8] and results["before"] == {}
    ir = results["after"]["tinybeir"]["8"]
    assert {"cosine_ndcg@10", "cosine_mrr@10", "cosine_recall@10"} <= set(ir)
    assert results["primary_metric"]["tinybeir"] == "cosine_ndcg@10"
    assert results["grid"]["tinybeir"]["binary"]["16"]["bytes"] == 2
    assert "tinybeir · cosine_ndcg@10" in capsys.readouterr().out

    # one run: default output RUN_DIR/report
    assert main(["report", str(run_dir)]) == 0
    report = run_dir / "report"
    for name in ("metric_vs_dim.png", "metric_vs_bytes.png", "training_curves.png"):
        _png_ok(report / name)
    md = (report / "report.md").read_text()
    for heading in (
        "## Quality at each dimension",
        "## Share of full-dimension quality kept",
        "## Quality against memory per vector",
        "## Training curves",
        "## Quality per energy",
    ):
        assert heading in md
    assert "![Primary metric against embedding size](metric_vs_dim.png)" in md
    assert "| 8 | " in md and "★" in md and "100.0%" in md

    # several directories compared, into a chosen folder
    compared = tmp_path / "compare"
    assert main(["report", str(run_dir), str(eval_dir), "--output", str(compared)]) == 0
    for name in ("metric_vs_dim.png", "metric_vs_bytes.png", "training_curves.png"):
        _png_ok(compared / name)
    md = (compared / "report.md").read_text()
    assert "`out`" in md and "`base-eval`" in md and "tinybeir" in md


def _grid_and_aggregates_are_right(results: dict) -> None:
    grid = results["grid"]["tiny"]
    assert list(grid) == ["float32", "int8", "binary"]
    for precision, per_byte in (("float32", 4), ("int8", 1), ("binary", 1 / 8)):
        assert set(grid[precision]) == {"32", "16", "8"}
        for dim, cell in grid[precision].items():
            assert cell["bytes"] == int(np.ceil(int(dim) * per_byte))
            assert 0.0 <= cell["cosine_accuracy"] <= 1.0
    assert set(results["grid_before"]["tiny"]) == {"float32", "int8", "binary"}
    # the float32 row of the grid is the usual result, whose shape is unchanged
    assert grid["float32"]["16"]["cosine_accuracy"] == results["after"]["tiny"]["16"]["cosine_accuracy"]
    assert "bytes" not in results["after"]["tiny"]["16"]
    values = [results["after"]["tiny"][d]["cosine_accuracy"] for d in ("32", "16", "8")]
    agg = results["aggregates"]["tiny"]
    assert agg["dimmin"]["cosine_accuracy"] == pytest.approx(min(values))
    assert agg["dimweighted"]["cosine_accuracy"] == pytest.approx((values[0] + values[1] + 2 * values[2]) / 4)


def test_nanobeir_names_are_checked_and_the_sets_not_verified_offline(tiny_config, write_config, capsys):
    tiny_config["evaluation"]["evaluators"].append({"type": "nanobeir", "datasets": ["scifact", "nfcorpus"]})
    assert main(["check", str(write_config(tiny_config))]) == 0
    assert "evaluation.evaluators.1: NanoBEIR (scifact, nfcorpus) not verified offline" in capsys.readouterr().out
    tiny_config["evaluation"]["evaluators"][1]["datasets"] = ["scifactt"]
    assert main(["check", str(write_config(tiny_config))]) == 2
    assert "evaluation.evaluators.1.datasets: unknown NanoBEIR set(s) scifactt" in capsys.readouterr().err


def test_report_on_a_directory_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.json in" in capsys.readouterr().err
