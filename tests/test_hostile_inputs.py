"""Hostile configs and data: every problem is one line naming the YAML path (or file and row) and
the fix, `mtrain check` exits 2 without a traceback, and all problems of a phase come at once."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import MINIMAL, problems_of

from matryoshka_train.cli import main
from matryoshka_train.config import validate


def check(config: dict, write_config, capsys) -> tuple[int, list[str], str]:
    """Run `mtrain check`; return the exit code, the error lines and stdout."""
    code = main(["check", str(write_config(config))])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, [line for line in captured.err.splitlines() if line.startswith("error:")], captured.out


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def triplets(n: int) -> list[dict]:
    return [{"anchor": f"a{i} river", "positive": f"p{i} lantern", "negative": f"n{i} copper"} for i in range(n)]


# --------------------------------------------------------------------------------------------
# config: schema phase


@pytest.mark.parametrize(
    "section, values, expected",
    [
        ("training", {"learning_rate": 0}, "training.learning_rate: input should be greater than 0"),
        ("training", {"learning_rate": -1e-5}, "training.learning_rate: input should be greater than 0"),
        ("training", {"learning_rate": float("inf")}, "training.learning_rate: input should be a finite number"),
        ("training", {"per_device_train_batch_size": "big"}, "training.per_device_train_batch_size: "
                                                             "input should be a valid integer"),
        ("training", {"warmup_ratio": 1.5}, "training.warmup_ratio: input should be less than 1"),
        ("matryoshka", {"dims": [64, 128]}, "matryoshka.dims: dims must be sorted in descending order"),
        ("matryoshka", {"dims": [64, 64]}, "matryoshka.dims: dims must be unique"),
        ("matryoshka", {"dims": [64, 32], "weights": [1, 2, 3]}, "matryoshka: weights has 3 entries but dims has 2"),
        ("matryoshka", {"dims": [64, 32], "weights": [-1, 2]}, "matryoshka.weights: weights must be >= 0"),
        ("training", {"extra": {"fp16": True}}, "training.extra.fp16: precision is chosen by training.precision"),
        ("training", {"extra": {"bf16": True}}, "training.extra.bf16: precision is chosen by training.precision"),
        ("training", {"extra": {"learning_rate": 1}}, "training.extra.learning_rate: learning_rate is a training key; "
                                                      "set training.learning_rate instead"),
        ("training", {"extra": {"hub_token": "abc"}}, "training.extra.hub_token: never put tokens in a config"),
        ("training", {"load_best_model_at_end": True}, "training: load_best_model_at_end needs eval_strategy"),
    ],
)
def test_bad_values_are_named_by_yaml_path(section, values, expected):
    raw = copy.deepcopy(MINIMAL)
    raw[section] = values
    lines = problems_of(raw)
    assert any(line.startswith(expected) for line in lines), lines


def test_every_cross_section_problem_is_reported_together():
    raw = copy.deepcopy(MINIMAL)
    raw["datasets"].append(copy.deepcopy(raw["datasets"][0]))
    raw["evaluation"] = {"evaluators": [{"type": "triplet", "dataset": "e"}, {"type": "triplet", "dataset": "d"}]}
    assert problems_of(raw) == [
        "datasets: dataset names must be unique; repeated: d",
        "evaluation.evaluators.0.dataset: no dataset named 'e'",
        "evaluation.evaluators.1.dataset: dataset 'd' has no eval "
        "split; add datasets[].eval (first, count, ratio or source)",
    ]


def test_score_range_must_go_up():
    raw = copy.deepcopy(MINIMAL)
    raw["datasets"][0]["score_range"] = [5, 0]
    assert problems_of(raw) == ["datasets.0.score_range: score_range must be "
                                "[low, high] with low < high, got [5.0, 0.0]"]


def test_malformed_yaml_through_the_cli_is_one_line_with_line_and_column(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name_or_path: x\n training: {}\n", encoding="utf-8")
    assert main(["check", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {path}:3:") and "malformed YAML" in line


def test_debug_shows_the_traceback_and_the_default_does_not(tiny_config, write_config, capsys):
    tiny_config["training"]["learning_rate"] = 0
    path = str(write_config(tiny_config))
    assert main(["check", path]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["check", path, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# config: checks against the model


def test_model_phase_problems_are_reported_together(tiny_config, write_config, capsys):
    tiny_config["matryoshka"] = {"dims": [64, 16]}
    tiny_config["training"]["per_device_train_batch_size"] = 1
    tiny_config["loss"] = {"name": "cached_mnrl", "kwargs": {"mini_batch_size": 4}}
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2
    joined = "\n".join(errors)
    assert "error: matryoshka.dims: dims [64] exceed the model's embedding size 32" in joined
    assert (
        "error: training.per_device_train_batch_size: CachedMultipleNegativesRankingLoss uses in-batch negatives and "
        "needs a batch of at least 2"
        in joined
    )
    assert (
        "error: loss.kwargs.mini_batch_size: mini_batch_size 4 is larger than the batch (1); make it smaller" in joined
    )


def test_mini_batch_size_must_be_a_positive_integer(tiny_config, write_config, capsys):
    tiny_config["loss"] = {"name": "cached_mnrl", "kwargs": {"mini_batch_size": 0}}
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2 and errors == ["error: loss.kwargs.mini_batch_size: must be a whole number of rows >= 1, got 0"]


def test_weights_without_dims_are_checked_against_the_default_dims(tiny_config, write_config, capsys):
    tiny_config["matryoshka"] = {"weights": [1, 1, 1]}  # the tiny model's default dims are [32]
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2
    assert errors[0].startswith("error: matryoshka.weights: weights has 3 entries but the dims are [32] (1)")


def test_a_missing_local_model_is_an_error_not_a_hub_id(tiny_config, write_config, tmp_path, capsys):
    tiny_config["model"]["name_or_path"] = str(tmp_path / "no-such-model")
    code, errors, out = check(tiny_config, write_config, capsys)
    assert code == 2 and "is on the hub" not in out
    assert errors[0].startswith(f"error: model.name_or_path: no model directory at {tmp_path / 'no-such-model'}")


def test_a_model_name_too_long_for_a_path_is_one_hub_error(tiny_config, write_config, monkeypatch, capsys):
    """A name the file system cannot even look up (here 5,000 characters) is a hub id, checked and
    loaded as one, not an OSError from asking whether it is a directory."""
    from matryoshka_train.config.schema import ModelConfig
    from matryoshka_train.errors import ConfigError
    from matryoshka_train.models.loading import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "org/" + "m" * 5000
    tiny_config["model"]["name_or_path"] = name
    code, errors, out = check(tiny_config, write_config, capsys)  # asserts no traceback
    assert code == 0 and "is on the hub: not verified offline" in out
    with pytest.raises(ConfigError) as raised:
        load_model(ModelConfig(name_or_path=name))
    assert str(raised.value).startswith("model.name_or_path: cannot load 'org/mmm"), str(raised.value)[:200]


def test_a_missing_data_file_names_its_path(tiny_config, write_config, capsys):
    tiny_config["datasets"][0]["source"]["path"] = "no/such.jsonl"
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2 and errors[0].startswith("error: datasets.0.source: file not found: no/such.jsonl")


def test_trust_remote_code_warns_with_the_model_name(tiny_config, tiny_model_dir, caplog):
    from matryoshka_train.config import ModelConfig
    from matryoshka_train.models import load_model

    with caplog.at_level("WARNING", logger="matryoshka_train"):
        load_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    assert not caplog.records
    with caplog.at_level("WARNING", logger="matryoshka_train"):
        load_model(ModelConfig(name_or_path=str(tiny_model_dir), trust_remote_code=True))
    assert f"trust_remote_code is on: code shipped with '{tiny_model_dir}' will run" in caplog.text
    assert validate(copy.deepcopy(MINIMAL)).model.trust_remote_code is False


# --------------------------------------------------------------------------------------------
# data


def test_empty_file(tiny_config, write_config, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    tiny_config["datasets"][0]["source"]["path"] = str(tmp_path / "empty.jsonl")
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2 and errors == [f"error: datasets.0.source: file is empty: {tmp_path / 'empty.jsonl'}"]


def test_invalid_utf8_names_file_and_line(tiny_config, write_config, tmp_path, capsys):
    path = tmp_path / "latin1.jsonl"
    good = "".join(json.dumps(r) + "\n" for r in triplets(4)).encode()
    path.write_bytes(good + b'{"anchor": "caf\xe9", "positive": "x", "negative": "y"}\n')
    tiny_config["datasets"][0]["source"]["path"] = str(path)
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2
    assert errors == [
        (
            f"error: datasets.0.source: {path} line 5 is not valid UTF-8 (byte 0xe9 at column 16); "
            "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
        )
    ]


def test_a_broken_json_line_is_named(tiny_config, write_config, tmp_path, capsys):
    path = tmp_path / "broken.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in triplets(3)) + '{"anchor": "a", "positive": }\n', encoding="utf-8"
    )
    tiny_config["datasets"][0]["source"]["path"] = str(path)
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2 and errors[0].startswith(f"error: datasets.0.source: {path} line 4 is not valid JSON")


def test_missing_and_extra_columns(tiny_config, write_config, tmp_path, capsys):
    rows = [dict(r, id=str(i)) for i, r in enumerate(triplets(40))]
    tiny_config["datasets"][0]["source"]["path"] = str(jsonl(tmp_path / "extra.jsonl", rows))
    tiny_config["datasets"][0]["columns"] = None  # all four columns: 'id' would silently be a hard negative
    code, errors, out = check(tiny_config, write_config, capsys)
    assert code == 0, errors
    assert (
        "warning: datasets.0 (tiny): no columns listed, so all 4 "
        "are used in file order (anchor, positive, negative, id)"
        in out
    )

    tiny_config["datasets"][0]["columns"] = ["anchor", "positive", "negatives"]
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2
    assert errors == [
        "error: datasets.0.columns: column(s) negatives not in the data; it has: anchor, positive, negative, id"
    ]


def test_empty_texts_are_dropped_and_counted_then_refused_above_the_threshold(
    tiny_config, write_config, tmp_path, capsys
):
    rows = triplets(40)
    rows[3]["positive"] = None
    rows[7]["anchor"] = "   "
    path = jsonl(tmp_path / "holes.jsonl", rows)
    tiny_config["datasets"][0]["source"]["path"] = str(path)
    code, errors, out = check(tiny_config, write_config, capsys)
    assert code == 0, errors
    assert "dropped 2 row(s) with an empty text (rows 4, 8)" in out

    tiny_config["datasets"][0]["max_empty_ratio"] = 0.01
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2
    assert errors == [
        (
            f"error: datasets.0: 2 of 40 rows (5%) in {path} have a null or blank text (rows 4, 8), more than "
            "max_empty_ratio 0.01 allows; fix the data, or raise datasets.0.max_empty_ratio to drop them"
        )
    ]


def test_numbers_in_a_text_column_are_named_with_the_row(tiny_config, write_config, tmp_path, capsys):
    rows = triplets(20)
    rows[5]["negative"] = 12
    tiny_config["datasets"][0]["source"]["path"] = str(jsonl(tmp_path / "numbers.jsonl", rows))
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2
    assert "column 'negative' must hold text" in errors[0] and "(row 6; e.g. 12)" in errors[0]


def test_long_texts_are_counted_per_dataset(tiny_config, write_config, tmp_path, capsys):
    rows = triplets(30)
    for i in (2, 9, 11):
        rows[i]["positive"] = " ".join(["lantern"] * 100)  # the tiny model reads 32 tokens
    tiny_config["datasets"][0]["source"]["path"] = str(jsonl(tmp_path / "long.jsonl", rows))
    tiny_config["datasets"][0]["eval"] = None
    tiny_config["evaluation"] = {"evaluators": []}
    code, errors, out = check(tiny_config, write_config, capsys)
    assert code == 0, errors
    assert (
        "tiny: 3 of 30 rows have a text longer than max_seq_length 32 tokens (longest 102); they will be truncated"
        in out
    )


def test_label_embeddings_of_the_wrong_width(tiny_config, write_config, tmp_path, capsys):
    rows = [{"sentence": f"river {i}", "label": [0.1] * (16 if i >= 4 else 32)} for i in range(20)]
    tiny_config["datasets"] = [{"name": "distill", "source": {"path": str(jsonl(tmp_path / "d.jsonl", rows))}}]
    tiny_config["loss"] = {"name": "mse"}
    tiny_config["evaluation"] = {"evaluators": []}
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2
    assert errors == [
        (
            f"error: datasets.0: label embeddings in {tmp_path / 'd.jsonl'} have width 16 (rows 5, 6, 7 …) but the "
            "model's is 32; compute the labels with a teacher of width 32, or train a model of that width"
        )
    ]


def _scored(tmp_path: Path, scores: list[float]) -> str:
    rows = [{"sentence1": f"river {i}", "sentence2": f"lantern {i}", "score": s} for i, s in enumerate(scores)]
    return str(jsonl(tmp_path / "scored.jsonl", rows))


def test_scores_outside_the_cosine_range_suggest_score_range(tiny_config, write_config, tmp_path, capsys):
    path = _scored(tmp_path, [i % 6 for i in range(24)])  # a 0-5 scale
    tiny_config["datasets"] = [{"name": "sts", "source": {"path": path}}]
    tiny_config["loss"] = {"name": "cosine"}
    tiny_config["evaluation"] = {"evaluators": []}
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2
    (line,) = errors
    assert "CosineSimilarityLoss compares scores with a cosine similarity, which lies in [-1, 1]" in line
    assert (
        "scores from 0 to 5 (rows 3, 4, 5 …)" in line
        and "set datasets.0.score_range to their scale (e.g. [0, 5])" in line
    )

    tiny_config["datasets"][0]["score_range"] = [0, 5]
    code, errors, out = check(tiny_config, write_config, capsys)
    assert code == 0, errors
    assert "scores rescaled from [0.0, 5.0] to [0, 1]" in out

    tiny_config["datasets"][0]["score_range"] = [0, 4]
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert (
        code == 2 and "score(s) in" in errors[0] and "lie outside score_range [0, 4] (rows 6, 12, 18 …: 5)" in errors[0]
    )

    tiny_config["loss"] = {"name": "cosent"}  # CoSENT takes any float
    tiny_config["datasets"][0]["score_range"] = None
    assert check(tiny_config, write_config, capsys)[0] == 0


def test_rescaled_scores_reach_the_loss(tiny_config, tmp_path):
    from matryoshka_train.data import prepare_dataset

    cfg = validate(
        dict(
            tiny_config,
            evaluation={},
            datasets=[{"name": "s", "source": {"path": _scored(tmp_path, [0, 2.5, 5])}, "score_range": [0, 5]}],
        )
    )
    prepared = prepare_dataset(cfg.datasets[0], 0, 0, "CosineSimilarityLoss")
    assert prepared.train["score"] == [0.0, 0.5, 1.0]


def test_a_dataset_smaller_than_one_batch(tiny_config, write_config, tmp_path, capsys):
    tiny_config["datasets"][0]["source"]["path"] = str(jsonl(tmp_path / "few.jsonl", triplets(5)))
    tiny_config["datasets"][0]["eval"] = None
    tiny_config["evaluation"] = {"evaluators": []}
    code, errors, out = check(tiny_config, write_config, capsys)
    assert code == 0 and "warning: datasets.0 (tiny): 5 rows is less than one batch (8)" in out

    tiny_config["training"]["dataloader_drop_last"] = True
    code, errors, _ = check(tiny_config, write_config, capsys)
    assert code == 2
    assert errors == [
        (
            "error: datasets.0: tiny has 5 training rows, fewer than one batch (8), and training.dataloader_drop_last "
            "drops that partial batch, leaving nothing to train on; add rows, lower "
            "training.per_device_train_batch_size, "
            "or set dataloader_drop_last: false"
        )
    ]


def test_run_refuses_the_same_data_problems_before_training(tiny_config, write_config, tmp_path, capsys):
    tiny_config["datasets"][0]["source"]["path"] = str(jsonl(tmp_path / "few.jsonl", triplets(5)))
    tiny_config["datasets"][0]["eval"] = None
    tiny_config["evaluation"] = {"evaluators": []}
    tiny_config["training"]["dataloader_drop_last"] = True
    assert main(["run", str(write_config(tiny_config))]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "leaving nothing to train on" in errors[0]
    assert not Path(tiny_config["training"]["output_dir"]).exists()
