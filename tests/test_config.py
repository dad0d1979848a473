"""The config schema: strict keys with suggestions, typed overrides, extends, YAML paths in errors."""

from __future__ import annotations

import copy

import pytest
from conftest import MINIMAL, problems_of

from matryoshka_train.config import apply_override, load_config, validate
from matryoshka_train.errors import ConfigError


def test_minimal_config_fills_defaults():
    config = validate(copy.deepcopy(MINIMAL))
    assert config.loss.name == "MultipleNegativesRankingLoss"
    assert config.loss.matryoshka is True
    assert config.training.batch_sampler == "auto"
    assert config.carbon.enabled is True
    assert config.datasets[0].source.path == ["x.jsonl"]


def test_unknown_key_is_named_with_a_suggestion():
    raw = copy.deepcopy(MINIMAL)
    raw["training"] = {"lerning_rate": 1e-5}
    assert problems_of(raw) == ["training.lerning_rate: unknown key 'lerning_rate'; did you mean 'learning_rate'?"]


def test_unknown_key_inside_a_list_item_has_its_index():
    raw = copy.deepcopy(MINIMAL)
    raw["datasets"][0]["colums"] = ["a", "b"]
    assert problems_of(raw) == ["datasets.0.colums: unknown key 'colums'; did you mean 'columns'?"]


def test_unknown_section_lists_what_is_allowed_when_nothing_is_close():
    raw = copy.deepcopy(MINIMAL)
    raw["zzz"] = 1
    (line,) = problems_of(raw)
    assert line.startswith("zzz: unknown key 'zzz'; allowed here: model, datasets")


def test_all_problems_are_reported_at_once():
    raw = copy.deepcopy(MINIMAL)
    raw["training"] = {"learning_rate": "fast", "per_device_train_batch_size": 0, "epochs": 3}
    raw["matryoshka"] = {"dims": [64, 128]}
    lines = problems_of(raw)
    assert len(lines) == 4
    joined = "\n".join(lines)
    assert "training.learning_rate: input should be a valid number" in joined and "'fast'" in joined
    assert "training.per_device_train_batch_size: input should be greater than 0" in joined
    assert "training.epochs: unknown key 'epochs'" in joined
    assert "matryoshka.dims: dims must be sorted in descending order" in joined


@pytest.mark.parametrize(
    "matryoshka, message",
    [
        ({"dims": [64, 64, 32]}, "dims must be unique"),
        ({"dims": []}, "at least one dim"),
        ({"dims": [64, 0]}, "positive"),
        ({"dims": [64, 32], "weights": [1]}, "weights has 1 entries but dims has 2"),
    ],
)
def test_bad_dims(matryoshka, message):
    raw = dict(copy.deepcopy(MINIMAL), matryoshka=matryoshka)
    assert any(message in line for line in problems_of(raw))


def test_unknown_loss_gets_a_suggestion_and_aliases_resolve():
    raw = dict(copy.deepcopy(MINIMAL), loss={"name": "MultipleNegativeRankingLoss"})
    assert "did you mean 'MultipleNegativesRankingLoss'?" in problems_of(raw)[0]
    assert validate(dict(copy.deepcopy(MINIMAL), loss={"name": "cached_mnrl"})).loss.name == (
        "CachedMultipleNegativesRankingLoss"
    )


def test_source_needs_exactly_one_of_path_or_hub():
    raw = copy.deepcopy(MINIMAL)
    raw["datasets"][0]["source"] = {"path": "a.jsonl", "hub": "org/set"}
    assert problems_of(raw) == [
        "datasets.0.source: give exactly one of 'path' (local files) or 'hub' (a hub dataset id)"
    ]


def test_evaluator_naming_an_unknown_dataset():
    raw = dict(copy.deepcopy(MINIMAL), evaluation={"evaluators": [{"type": "triplet", "dataset": "dd"}]})
    assert problems_of(raw) == ["evaluation.evaluators.0.dataset: no dataset named 'dd'; did you mean 'd'?"]


def test_set_overrides_are_typed_by_the_schema(write_config):
    path = write_config(copy.deepcopy(MINIMAL))
    config = load_config(
        path,
        ["training.learning_rate=3e-5", "datasets.0.limit=100", "matryoshka.dims=[256, 64]",
         "model.name_or_path=123", "carbon.enabled=false"],
    )
    assert config.training.learning_rate == pytest.approx(3e-5)
    assert config.datasets[0].limit == 100
    assert config.matryoshka.dims == [256, 64]
    assert config.model.name_or_path == "123"  # stays a string where the schema wants one
    assert config.carbon.enabled is False


def test_set_with_a_bad_index_or_shape():
    raw = copy.deepcopy(MINIMAL)
    with pytest.raises(ConfigError, match="list index '5' out of range"):
        apply_override(raw, "datasets.5.limit=3")
    with pytest.raises(ConfigError, match="expects key=value"):
        apply_override(raw, "training.seed")


def test_extends_merges_mappings_and_replaces_lists(write_config):
    base = write_config(dict(copy.deepcopy(MINIMAL), training={"learning_rate": 1e-4, "seed": 7}), "base.yaml")
    child = write_config({"extends": base.name, "training": {"seed": 9}, "matryoshka": {"dims": [8]}})
    config = load_config(child)
    assert config.training.learning_rate == pytest.approx(1e-4)
    assert config.training.seed == 9
    assert config.matryoshka.dims == [8]


def test_malformed_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name_or_path: [unclosed\ndatasets: []\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.where.startswith(f"{path}:3:") and "malformed YAML" in problem.message


def test_missing_and_empty_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="the config file is empty"):
        load_config(empty)


def test_yaml_is_data_not_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo hacked']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(path)


def test_config_reference_is_up_to_date():
    """docs/config.md is generated from the schema; this fails when a field changes without it."""
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run(
        [sys.executable, "scripts/gen_config_reference.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_a_key_with_a_newline_is_named_on_one_line():
    raw = {"model": {"name_or_path": "x", "a\nb": 0}, "datasets": [{"name": "d", "source": {"path": "x"}}]}
    problems = problems_of(raw)
    assert problems == [p for p in problems if "\n" not in p]
    assert any("unknown key 'a\\nb'" in p for p in problems)
