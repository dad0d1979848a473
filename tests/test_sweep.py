"""`mtrain sweep` on the tiny model: a random sweep end to end, two drivers sharing one SQLite
study, resuming after a dead driver, pruning, and the errors caught before any trial starts.

Trials are real `python -m matryoshka_train run` processes; each trains 2 steps without the
baseline evaluation, so a trial costs the start of a Python process and little more."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from matryoshka_train.cli import main  # noqa: E402 - after importorskip
from matryoshka_train.sweep.driver import load, open_study, run_sweep, suggest  # noqa: E402 - after importorskip


@pytest.fixture()
def sweep_file(tiny_config, write_config, tmp_path):
    """sweep_file(**changes) -> a sweep over the tiny config (random sampler, mean over dims)."""
    base = write_config(tiny_config, name="base.yaml")

    def make(**changes):
        data = {
            "base": base.name,
            "output_dir": str(tmp_path / "sweep"),
            "n_trials": 2,
            "sampler": {"type": "random", "seed": 0},
            "objective": {"evaluator": "tiny", "metric": "cosine_accuracy", "aggregate": "mean"},
            "search_space": {
                "training.learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
                "matryoshka.reduction": {"choices": ["sum", "mean"]},
            },
            "fixed": {"training.max_steps": 2, "evaluation.before": False},
        }
        data.update(changes)
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return make


def _states(sweep):
    return [(t.number, t.state.name) for t in open_study(sweep).trials]


def test_random_sweep_writes_table_plots_and_a_runnable_best_yaml(sweep_file, tmp_path, capsys):
    path = sweep_file(n_trials=4)
    assert main(["sweep", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "tiny_dimmean_cosine_accuracy" in printed and "energy_kWh" in printed and "Best: trial" in printed
    out = tmp_path / "sweep"
    summary = json.loads((out / "trials.json").read_text())
    assert [r["state"] for r in summary["trials"]] == ["complete"] * 4
    dirs = {r["output_dir"] for r in summary["trials"]}
    assert len(dirs) == 4 and all((tmp_path / d / "results.json").is_file() for d in dirs)
    assert all(set(r["per_dim"]) == {"32", "16", "8"} for r in summary["trials"])
    assert (out / "objective_by_trial.png").is_file() and (out / "param_effects.png").is_file()
    best = summary["best"]
    assert best["value"] == max(r["objective"] for r in summary["trials"])
    # as each trial ended: trials done of the total, its value, and the best so far
    ended = [line for line in printed.splitlines() if line.startswith("[")]
    values = [r["objective"] for r in summary["trials"]]
    assert [r["trial"] for r in summary["trials"]] == [0, 1, 2, 3]
    expected = []
    for done in range(1, 5):
        lead = max(range(done), key=lambda i: values[i])
        expected.append(f"[{done}/4 done] trial {done - 1}: tiny_dimmean_cosine_accuracy = {values[done - 1]:.4f}"
                        f" · best {values[lead]:.4f} (trial {lead})")
    assert ended == expected

    raw = yaml.safe_load((out / "best.yaml").read_text())
    assert raw["training"]["learning_rate"] == pytest.approx(best["params"]["training.learning_rate"])
    assert raw["matryoshka"]["reduction"] == best["params"]["matryoshka.reduction"]
    assert raw["training"]["max_steps"] == 2  # the fixed keys are part of what was measured
    assert main(["check", str(out / "best.yaml")]) == 0
    assert main(["run", str(out / "best.yaml"), "--set", "training.max_steps=1"]) == 0
    assert (out / "best" / "results.json").is_file()


def test_two_drivers_sharing_one_sqlite_study_run_disjoint_trials(sweep_file, tmp_path):
    path = sweep_file(n_trials=2)
    ran: dict[int, list[str]] = {0: [], 1: []}

    def driver(i):
        sweep = load(path)
        sweep.echo = ran[i].append
        run_sweep(sweep)

    threads = [threading.Thread(target=driver, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [
        {line.split(":")[0] for line in ran[i] if line.startswith("trial ") and "=" in line.split(":")[1]}
        for i in (0, 1)
    ]
    assert started[0] and started[1] and not started[0] & started[1]
    sweep = load(path)
    trials = open_study(sweep).trials
    assert {f"trial {t.number}" for t in trials} == started[0] | started[1]
    assert all(t.state.name == "COMPLETE" for t in trials) and len(trials) >= 2
    assert len({t.user_attrs["output_dir"] for t in trials}) == len(trials)


def test_interrupted_sweep_resumes_rerunning_the_dead_trial_and_keeping_finished_ones(sweep_file):
    path = sweep_file(n_trials=2)
    sweep = load(path)
    sweep.out.mkdir(parents=True)
    study = open_study(sweep)
    finished = study.ask()
    suggest(finished, sweep.config)
    study.tell(finished, 0.25)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = study.ask()  # what a driver killed mid-trial leaves behind: RUNNING, its pid gone
    params = suggest(left, sweep.config)
    left.set_user_attr("host", socket.gethostname())
    left.set_user_attr("pid", dead.pid)

    run_sweep(load(path))
    trials = open_study(load(path)).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[0].value == 0.25
    assert trials[1].user_attrs["interrupted"] is True
    assert trials[2].params == params and trials[2].user_attrs["retry_of"] == 1
    assert (sweep.out / "trials" / "trial-0002" / "results.json").is_file()


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_pruned_trial_is_stopped_and_recorded_as_pruned(sweep_file):
    path = sweep_file(
        n_trials=1,
        pruner="median",
        fixed={
            "training.max_steps": 40,
            "evaluation.before": False,
            "training.eval_strategy": "steps",
            "training.eval_steps": 1,
        },
    )
    sweep = load(path)
    sweep.pruner_override = AlwaysPrune()
    summary = run_sweep(sweep)
    (row,) = summary["trials"]
    assert row["state"] == "pruned" and row["objective"] is not None and set(row["per_dim"]) == {"32", "16", "8"}
    assert open_study(sweep).trials[0].state.name == "PRUNED"
    trial_dir = sweep.out / "trials" / "trial-0000"
    assert not (trial_dir / "results.json").exists()  # the process was ended before it finished training
    assert summary["best"] is None


def test_sweep_errors_are_caught_before_any_trial(sweep_file, tmp_path, capsys):
    path = sweep_file(
        search_space={
            "training.lerning_rate": {"low": 1.0e-5, "high": 1.0e-4},
            "training.warmup_ratio": {"low": 0.5, "high": 0.1},
            "training.per_device_train_batch_size": {"choices": [8, 0]},
        },
        objective={"evaluator": "tiyn", "metric": "cosine_accuracy", "dim": 64},
    )
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: search_space.training.warmup_ratio: low (0.5) is above high (0.1); swap them",
    ]
    path = sweep_file(
        search_space={
            "training.lerning_rate": {"low": 1.0e-5, "high": 1.0e-4},
            "training.per_device_train_batch_size": {"choices": [8, 0]},
        },
        objective={"evaluator": "tiyn", "metric": "cosine_accuracy", "dim": 64},
        pruner="median",
    )
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: search_space.training.lerning_rate: unknown key 'lerning_rate'; did you mean 'learning_rate'?",
        "error: search_space.training.per_device_train_batch_size: "
        "input should be greater than 0 (got '0') (with value 0)",
        "error: objective.evaluator: no evaluator named 'tiyn'; did you mean 'tiny'?; evaluators: tiny",
        "error: objective.dim: dim 64 is not evaluated; evaluated dims: 32, 16, 8",
        (
            "error: pruner: pruning reads the evaluations made during training: set training.eval_strategy: steps "
            "and training.eval_steps (in fixed: or the base config), or pruner: none"
        ),
    ]
    assert not (tmp_path / "sweep").exists()


def test_grid_sampler_tries_every_combination_once_and_stops(sweep_file):
    """No trial processes: the grid is walked through the study as the workers would."""
    from matryoshka_train.sweep.driver import _grid_done

    path = sweep_file(
        n_trials=10,
        sampler={"type": "grid"},
        search_space={
            "matryoshka.reduction": {"grid": ["sum", "mean"]},
            "matryoshka.dims": {"grid": [[32, 16, 8], [32, 8]]},
        },
    )
    sweep = load(path)
    sweep.out.mkdir(parents=True)
    study = open_study(sweep)
    seen = []
    while not _grid_done(study, sweep.config):
        trial = study.ask()
        seen.append(tuple(sorted(suggest(trial, sweep.config).items())))
        study.tell(trial, 0.5)
    assert len(seen) == 4 and len(set(seen)) == 4
    assert ("matryoshka.dims", "json:[32, 8]") in {kv for s in seen for kv in s}


def test_objective_aggregates_and_launcher_command(sweep_file):
    from matryoshka_train.sweep.driver import trial_command
    from matryoshka_train.sweep.report import (
        objective_from_event,
        objective_from_results,
    )

    per_dim = {"32": {"cosine_accuracy": 0.9}, "16": {"cosine_accuracy": 0.7}, "8": {"cosine_accuracy": 0.5}}
    results = {"after": {"tiny": per_dim}}
    event = {
        "event": "eval",
        "step": 3,
        **{f"eval_tiny_dim{d}_cosine_accuracy": m["cosine_accuracy"] for d, m in per_dim.items()},
        "eval_tiny_int8_dim32_cosine_accuracy": 0.0,
        "eval_tiny_dimmean_cosine_accuracy": 0.0,
    }
    for objective, expected in [
        ({"aggregate": "mean"}, 0.7),
        ({"aggregate": "min"}, 0.5),
        ({"dim": 16}, 0.7),
        ({"aggregate": "weighted", "weights": [1.0, 0.5, 0.0]}, 1.25),
    ]:
        sweep = load(sweep_file(objective={"evaluator": "tiny", "metric": "cosine_accuracy", **objective}))
        assert objective_from_results(results, sweep.config) == pytest.approx(expected)
        assert objective_from_event(event, sweep.config) == pytest.approx(expected)

    sweep = load(sweep_file(launcher="accelerate launch --num_processes 2"))
    cmd = trial_command(sweep, {"training.learning_rate": 1e-3, "matryoshka.reduction": "mean"}, sweep.out / "t")
    assert cmd[:6] == ["accelerate", "launch", "--num_processes", "2", "-m", "matryoshka_train"]
    assert (
        "training.learning_rate=0.001" in cmd and "matryoshka.reduction=mean" in cmd and "training.max_steps=2" in cmd
    )
    assert "hub.push=false" in cmd and "hub.checkpoints=no" in cmd  # a trial never publishes


def test_sigterm_ends_the_running_trial_and_queues_it_again(sweep_file):
    import os
    import signal
    import time

    from conftest import REPO

    path = sweep_file(n_trials=1)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    driver = subprocess.Popen(
        [sys.executable, "-m", "matryoshka_train", "sweep", str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = path.parent / "sweep" / "trials" / "trial-0000" / "trial.log"
    deadline = time.time() + 60
    while not log.is_file() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 2
    assert "sweep interrupted; the running trial(s) will run again" in err
    trials = open_study(load(path)).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[0].user_attrs["interrupted"] is True and trials[1].user_attrs["retry_of"] == 0


def test_a_metric_the_evaluator_does_not_report_stops_the_sweep_after_one_trial(sweep_file, capsys):
    path = sweep_file(n_trials=3, objective={"evaluator": "tiny", "metric": "accuracy", "aggregate": "mean"})
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: objective.metric: evaluator 'tiny' has no metric 'accuracy'; it reports: cosine_accuracy"]
    assert [t.state.name for t in open_study(load(path)).trials] == ["FAIL"]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_line_as_a_trial_ends_counts_finished_trials_and_names_the_best(sweep_file, direction):
    """Complete, pruned and failed trials count as done; an interrupted one (it runs again) and a
    running one do not; the best follows the objective's direction. A grid counts its points."""
    from matryoshka_train.sweep.report import progress_line

    sweep = load(sweep_file(n_trials=8, objective={"evaluator": "tiny", "metric": "mse", "aggregate": "mean",
                                                   "direction": direction}))
    c = sweep.config
    study = optuna.create_study(direction=direction)
    assert progress_line(study, c, 0, "x") == "[0/8 done] trial 0: x · no completed trial yet"
    pruned = study.ask()
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert progress_line(study, c, 0, "pruned") == "[1/8 done] trial 0: pruned · no completed trial yet"
    for value in (0.5, 0.8, 0.2):
        study.tell(study.ask(), value)
    failed, interrupted = study.ask(), study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    interrupted.set_user_attr("interrupted", True)
    study.tell(interrupted, state=optuna.trial.TrialState.FAIL)
    study.ask()  # still running
    best = "0.8000 (trial 2)" if direction == "maximize" else "0.2000 (trial 3)"
    assert progress_line(study, c, 4, "failed") == f"[5/8 done] trial 4: failed · best {best}"

    grid = load(sweep_file(n_trials=50, sampler={"type": "grid"},
                           search_space={"matryoshka.reduction": {"choices": ["sum", "mean"]},
                                         "training.learning_rate": {"grid": [1e-4, 1e-3, 1e-2]}}))
    assert progress_line(study, grid.config, 4, "x").startswith("[5/6 done] ")
