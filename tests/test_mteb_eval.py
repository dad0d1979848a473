"""``type: mteb`` evaluators: MTEB tasks at every Matryoshka dim, offline.

The tasks here are defined locally (tests/mteb_tasks/local_sts.py, data from tests/data), the way a
user evaluates private data; hub-backed tasks by name are checked for their names and filters, and
for the one-line error their data gives when it cannot be loaded offline."""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile

import pytest
from conftest import REPO

from matryoshka_train.cli import main

pytest.importorskip("mteb")

TASK_FILE = REPO / "tests" / "mteb_tasks" / "local_sts.py"
STS_ROWS = REPO / "tests" / "data" / "sts-pairs.jsonl"


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _eval_config(evaluators: list[dict], dims=(32, 16, 8)) -> dict:
    return {"matryoshka": {"dims": list(dims)}, "evaluation": {"evaluators": evaluators}}


def test_mteb_tasks_score_every_dim_as_the_sts_evaluator_does(tiny_model_dir, write_config, tmp_path):
    """The same pairs through MTEB and through sentence-transformers' STS evaluator: equal Spearman at
    every dim, so the MTEB run really is cut to each dim (and the keys follow the per-dim shape)."""
    config = _eval_config([
        {"type": "mteb", "tasks": [f"{TASK_FILE}:LocalSTS", f"{TASK_FILE}:LocalSTSHalves"], "batch_size": 16},
        {"type": "mteb", "name": "first_half", "tasks": [f"{TASK_FILE}:LocalSTSHalves"], "subsets": ["first"]},
        {"type": "sts", "name": "plain", "source": {"path": str(STS_ROWS)}},
    ])
    out = tmp_path / "eval"
    assert main(["eval", str(tiny_model_dir), "--config", str(write_config(config)), "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    after = results["after"]
    assert set(after["mteb"]) == {"32", "16", "8"}
    assert results["primary_metric"]["mteb"] == "LocalSTS_cosine_spearman"
    for dim in ("32", "16", "8"):
        scores = after["mteb"][dim]
        assert set(scores) == {
            "LocalSTS_cosine_spearman", "LocalSTSHalves_cosine_spearman",
            "LocalSTSHalves_first_cosine_spearman", "LocalSTSHalves_second_cosine_spearman",
        }
        assert all(-1 <= v <= 1 for v in scores.values())
        assert scores["LocalSTS_cosine_spearman"] == pytest.approx(after["plain"][dim]["spearman_cosine"], abs=1e-6)
        halves = scores["LocalSTSHalves_first_cosine_spearman"], scores["LocalSTSHalves_second_cosine_spearman"]
        assert scores["LocalSTSHalves_cosine_spearman"] == pytest.approx(sum(halves) / 2)
        # the subsets filter keeps one subset: its score alone, under the task's key
        assert after["first_half"][dim] == {"LocalSTSHalves_cosine_spearman": pytest.approx(halves[0])}
    per_dim = [after["mteb"][d]["LocalSTS_cosine_spearman"] for d in ("32", "16", "8")]
    assert len(set(per_dim)) == 3, per_dim  # a random tiny model scores differently at each size
    assert results["aggregates"]["mteb"]["dimmin"]["LocalSTS_cosine_spearman"] == pytest.approx(min(per_dim))


def test_a_run_records_mteb_scores_before_and_after_training(tiny_config, write_config, tmp_path):
    tiny_config["training"]["max_steps"] = 2
    tiny_config["evaluation"]["evaluators"].append({"type": "mteb", "tasks": [f"{TASK_FILE}:LocalSTS"]})
    assert main(["run", str(write_config(tiny_config))]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    for when in ("before", "after"):
        assert set(results[when]["mteb"]) == {"32", "16", "8"}
        assert all(set(v) == {"LocalSTS_cosine_spearman"} for v in results[when]["mteb"].values())
    # training (lr 1e-3 on a random model) moves the scores
    assert results["before"]["mteb"]["32"] != results["after"]["mteb"]["32"]


@pytest.mark.parametrize(
    ("evaluator", "expected"),
    [
        ({"tasks": ["STS71"]},
         "evaluation.evaluators.0.tasks.0: unknown MTEB task 'STS71': use a name from mteb.get_tasks() or "
         "'file.py:ClassName' for a task of your own; did you mean 'STS17'?"),
        ({"tasks": ["STS17"], "subsets": ["ar-xx"]},
         "evaluation.evaluators.0.tasks.0: MTEB task 'STS17' has no subset ar-xx; its subsets: "),
        ({"tasks": ["STS17"], "languages": ["zzz"]},
         "evaluation.evaluators.0.tasks.0: MTEB task 'STS17' has no subset for languages zzz; its subsets: "),
        ({"tasks": ["STS17"], "splits": ["dev"]},
         "evaluation.evaluators.0.tasks.0: MTEB task 'STS17' has no split dev; its evaluation splits: test"),
        ({"tasks": [f"{TASK_FILE}:NoSuchTask"]},
         "evaluation.evaluators.0.tasks.0: 'NoSuchTask' in "),
        ({"tasks": ["missing_tasks.py:Task"]},
         "evaluation.evaluators.0.tasks.0: no task file missing_tasks.py (relative paths start at "),
    ],
)
def test_check_names_a_bad_task_in_one_line(evaluator, expected, tiny_config, write_config, capsys):
    tiny_config["evaluation"]["evaluators"] = [{"type": "mteb", **evaluator}]
    assert main(["check", str(write_config(tiny_config))]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line.removeprefix("error: ").startswith(expected), line


def test_check_accepts_hub_tasks_by_name_and_says_their_data_is_not_verified_offline(
        tiny_config, write_config, capsys):
    tiny_config["evaluation"]["evaluators"] = [{"type": "mteb", "tasks": ["STS17"], "subsets": ["ar-ar"]}]
    assert main(["check", str(write_config(tiny_config))]) == 0
    assert "evaluation.evaluators.0: MTEB task data (STS17) not verified offline" in capsys.readouterr().out


def test_a_hub_task_whose_data_cannot_be_loaded_is_one_error_line(tiny_model_dir, write_config, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))  # not in any cache either
    config = _eval_config([{"type": "mteb", "tasks": ["STS17"], "subsets": ["ar-ar"]}])
    assert main(["eval", str(tiny_model_dir), "--config", str(write_config(config)),
                 "--output", str(tmp_path / "o")]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line.startswith("error: evaluation.evaluators.0: cannot load the data of MTEB task 'STS17' (")
    assert line.endswith("hub-backed tasks need network access the first time (then the datasets cache serves them)")


def test_a_missing_mteb_package_is_one_line_naming_the_extra(tiny_config, write_config, tmp_path, capsys,
                                                             monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mteb" else real(name, *a))
    tiny_config["evaluation"]["evaluators"] = [{"type": "mteb", "tasks": ["STS17"]}]
    path = str(write_config(tiny_config))
    for verb in ("check", "run"):
        assert main([verb, path]) == 2
        (line,) = _errors(capsys.readouterr().err)
        assert line == ("error: evaluation.evaluators.0.type: the mteb evaluator needs the mteb package, which is "
                        "not installed; pip install 'matryoshka-train[mteb]' (or pip install mteb)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("evaluator", "message"),
    [
        ({"type": "mteb"}, "an mteb evaluator needs 'tasks', e.g. tasks: [STS17]"),
        ({"type": "mteb", "tasks": ["STS17"], "source": {"path": "x.jsonl"}},
         "an mteb evaluator reads its tasks' own data: remove 'source'"),
        ({"type": "mteb", "tasks": ["STS17"], "limit": 5},
         "an mteb evaluator reads its tasks' own data: remove 'limit'"),
        ({"type": "sts", "source": {"path": "x.jsonl"}, "languages": ["ara"]},
         "'languages' is for MTEB tasks: it needs type 'mteb'"),
    ],
)
def test_the_schema_keeps_mteb_keys_with_mteb_evaluators(evaluator, message):
    from conftest import MINIMAL, problems_of

    problems = problems_of({**MINIMAL, "evaluation": {"evaluators": [evaluator]}})
    assert any(message in p for p in problems), problems


def test_mteb_writes_its_cache_folder_under_the_temp_dir(monkeypatch):
    from matryoshka_train.evaluation import mteb_tasks

    monkeypatch.delenv("MTEB_CACHE", raising=False)
    mteb_tasks._mteb()
    assert os.environ["MTEB_CACHE"].startswith(tempfile.gettempdir())
    assert not (REPO / ".cache").exists()
