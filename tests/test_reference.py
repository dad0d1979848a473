"""`evaluation.reference`: published figures beside a run's own. A tiny run with a reference writes
the deltas (run − published) into results.json and prints them; `mtrain report` tables them and
draws the published points; `mtrain check` (and so `mtrain run`) refuses keys no evaluator produces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matryoshka_train.cli import main
from matryoshka_train.training.stages import combine

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def with_reference(config: dict, metrics: dict[str, float], source: str = "tiny/model card") -> dict:
    config["evaluation"]["reference"] = {"source": source, "metrics": metrics}
    return config


def test_run_and_report_put_the_run_beside_the_published_figures(tiny_config, write_config, capsys, monkeypatch):
    published = {"tiny_dim32_cosine_accuracy": 0.75, "tiny_dim8_cosine_accuracy": 0.5}
    path = write_config(with_reference(tiny_config, published))
    assert main(["run", str(path)]) == 0
    printed = capsys.readouterr().out
    out = tiny_config["training"]["output_dir"]

    results = json.loads((Path(out) / "results.json").read_text())
    reference = results["reference"]
    assert reference["source"] == "tiny/model card" and set(reference["metrics"]) == set(published)
    for key, value in published.items():
        dim = key.split("_")[1].removeprefix("dim")
        run = results["after"]["tiny"][dim]["cosine_accuracy"]
        row = reference["metrics"][key]
        assert (row["evaluator"], row["dim"], row["metric"]) == ("tiny", int(dim), "cosine_accuracy")
        assert row["published"] == value and row["run"] == run
        assert row["delta"] == pytest.approx(run - value)
    # the terminal table: one line per dim with published, this run and the signed delta
    assert "Against published figures (tiny/model card); delta = this run − published" in printed
    row = reference["metrics"]["tiny_dim8_cosine_accuracy"]
    assert f"       8     0.5000  {row['run']:8.4f}  {row['delta']:+8.4f}" in printed.splitlines()

    # mtrain report: the same comparison in report.md, and the stars in the dim plot
    import matplotlib.axes

    labels: list[str] = []
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        labels.append(kwargs.get("label", ""))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    report_dir = Path(out) / "report"
    assert main(["report", out]) == 0
    md = (report_dir / "report.md").read_text()
    assert "## Against the published model" in md
    assert f"| 32 | 0.7500 | {reference['metrics']['tiny_dim32_cosine_accuracy']['run']:.4f} | " \
           f"{reference['metrics']['tiny_dim32_cosine_accuracy']['delta']:+.4f} |" in md
    assert (report_dir / "metric_vs_dim.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "published: tiny/model card" in labels


def test_check_names_reference_keys_no_evaluator_produces(tiny_config, write_config, capsys):
    path = write_config(with_reference(tiny_config, {
        "tiny_dim32_cosine_accuracy": 0.9,  # fine
        "tiny_dim32_accuracy": 0.9,  # not a triplet metric name
        "heldout_dim32_cosine_accuracy": 0.9,  # no such evaluator
        "tiny_dim64_cosine_accuracy": 0.9,  # dim not evaluated
    }))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert ("evaluation.reference.metrics.tiny_dim32_accuracy: 'tiny_dim32_accuracy': a triplet evaluator has no "
            "metric 'accuracy'; its metrics are named like cosine_accuracy (e.g. tiny_dim32_cosine_accuracy)") in err
    assert ("evaluation.reference.metrics.heldout_dim32_cosine_accuracy: 'heldout_dim32_cosine_accuracy' is not a "
            "per-dim metric of any evaluator of this config: use <evaluator>_dim<d>_<metric> "
            "(e.g. tiny_dim32_<metric>); evaluators: tiny") in err
    assert ("evaluation.reference.metrics.tiny_dim64_cosine_accuracy: 'tiny_dim64_cosine_accuracy': dim 64 is not "
            "evaluated; evaluated dims: [32, 16, 8]") in err
    assert "tiny_dim32_cosine_accuracy:" not in err
    # run refuses the same config, with the same lines, before reading any data
    assert main(["run", str(path)]) == 2
    assert "a triplet evaluator has no metric 'accuracy'" in capsys.readouterr().err


def test_the_combined_results_of_stages_carry_the_last_stages_comparison():
    last = {"dims": [8], "after": {}, "reference": {"source": "card", "metrics": {}}}
    assert combine([{"dims": [8]}, last])["reference"] == last["reference"]


def test_eval_compares_a_model_with_published_figures(tiny_model_dir, write_config, data_dir, tmp_path, capsys):
    config = {
        "matryoshka": {"dims": [32, 16]},
        "evaluation": {
            "evaluators": [{"type": "triplet", "name": "dev", "source": {"path": str(data_dir / "triplets.jsonl")}}],
            "reference": {"source": "its card", "metrics": {"dev_dim16_cosine_accuracy": 0.6}},
        },
    }
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_model_dir), "--config", str(write_config(config)), "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    row = results["reference"]["metrics"]["dev_dim16_cosine_accuracy"]
    assert row["delta"] == pytest.approx(results["after"]["dev"]["16"]["cosine_accuracy"] - 0.6)
    assert "Against published figures (its card)" in capsys.readouterr().out
