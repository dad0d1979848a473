"""training.report_to: a tracker whose package is missing is refused up front, by check and run alike,
in one line naming the extra to install; an installed one receives the per-dim metrics."""

from __future__ import annotations

import importlib.util
import json

import pytest

from matryoshka_train.cli import main
from matryoshka_train.training import prepare

WANDB_INSTALLED = importlib.util.find_spec("wandb") is not None


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "mlflow", "trackio"])
def test_a_missing_tracker_package_is_one_problem_naming_its_extra(tracker, monkeypatch):
    real = importlib.util.find_spec
    hidden = {"tensorboard", "tensorboardX", "wandb", "mlflow", "trackio"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    problems = prepare.tracker_problems(["none", tracker])
    assert [str(p) for p in problems] == [
        f"training.report_to: {tracker} is not installed; pip install 'matryoshka-train[{tracker}]' "
        f"(or pip install {tracker})"
    ]
    monkeypatch.setattr(importlib.util, "find_spec", real)
    installed = [t for t in prepare.TRACKERS if any(real(m) for m in prepare.TRACKERS[t][0])]
    assert prepare.tracker_problems(installed + ["none"]) == []


@pytest.mark.skipif(WANDB_INSTALLED, reason="needs an environment without wandb")
@pytest.mark.parametrize("verb", ["check", "run"])
def test_check_and_run_refuse_a_tracker_that_is_not_installed(verb, tiny_config, write_config, tmp_path, capsys):
    path = str(write_config(tiny_config))
    assert main([verb, path, "--set", "training.report_to=wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == ("error: training.report_to: wandb is not installed; pip install 'matryoshka-train[wandb]' "
                      "(or pip install wandb)")
    assert len(err) == (2 if verb == "check" else 1)  # check adds its count line
    assert not (tmp_path / "out").exists()


def test_a_run_reporting_to_tensorboard_writes_the_per_dim_metrics(tiny_config, write_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_config["training"].update(max_steps=2, eval_strategy="steps", eval_steps=2, report_to="tensorboard")
    assert main(["run", str(write_config(tiny_config))]) == 0
    events = sorted((tmp_path / "out").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file was written"
    tags = set()
    for event_file in events:
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    for dim in (32, 16, 8):
        assert f"eval/tiny_dim{dim}_cosine_accuracy" in tags, sorted(tags)
    assert "train/loss" in tags


def test_the_final_evaluation_and_the_carbon_figures_reach_tensorboard(tiny_config, write_config, tmp_path):
    """No periodic evaluation: the per-dim metrics in the event file come from the final evaluation,
    logged at the last step after training, with the carbon figures (codecarbon offline); the values
    read back are the ones results.json holds, and the trackers' writer wrote one file, not two."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("codecarbon")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_config["training"].update(max_steps=2, eval_strategy="no", report_to="tensorboard")
    tiny_config["evaluation"]["before"] = False
    tiny_config["carbon"] = {"enabled": True, "offline": True}
    assert main(["run", str(write_config(tiny_config))]) == 0
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["carbon"]["tracked"] is True
    events = sorted(out.rglob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    scalars = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    for dim in (32, 16, 8):
        (point,) = scalars[f"eval/tiny_dim{dim}_cosine_accuracy"]
        assert point.step == 2
        assert point.value == pytest.approx(results["after"]["tiny"][str(dim)]["cosine_accuracy"], abs=1e-6)
    assert "eval/tiny_dimmean_cosine_accuracy" in scalars
    for key in ("energy_kwh", "emissions_kg", "duration_s"):
        (point,) = scalars[f"train/carbon/{key}"]
        assert point.step == 2
        assert point.value == pytest.approx(results["carbon"][key], rel=1e-5, abs=1e-12)
    assert scalars["train/carbon/energy_kwh"][0].value > 0
