"""Progress: bars for the per-dim evaluation, tokenizing and teacher labels beside the training bar,
all on by default and all gone with --quiet (#16 item 3). The sweep's per-trial lines (done/total
and the best so far) are checked in tests/test_sweep.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from matryoshka_train.data.distill_labels import LABEL_BAR
from matryoshka_train.evaluation.evaluators import EVAL_BAR
from matryoshka_train.reporting import progress


@pytest.fixture()
def distill_config(tiny_model_dir, tmp_path):
    """A distillation run over fresh sentences (so nothing is cached yet): the teacher labels them,
    the texts are tokenized once, and an MSE evaluator runs at two dims before and after 1 step."""
    sentences = tmp_path / "sentences.jsonl"
    sentences.write_text("".join(json.dumps({"sentence": f"sentence {i} about a river"}) + "\n" for i in range(20)))
    return {
        "model": {"name_or_path": str(tiny_model_dir)},
        "datasets": [{"name": "s", "source": {"path": str(sentences)}, "eval": {"count": 6}}],
        "loss": {"name": "MSELoss"},
        "distill": {"teacher": str(tiny_model_dir), "cache_dir": str(tmp_path / "labels"), "chunk_size": 5},
        "matryoshka": {"dims": [32, 16]},
        "evaluation": {"evaluators": [{"type": "mse", "dataset": "s"}]},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "per_device_train_batch_size": 4,
                     "pretokenize": True},
        "carbon": {"enabled": False},
    }


@pytest.mark.parametrize("quiet", [False, True])
def test_evaluation_tokenizing_and_label_bars_show_unless_quiet(quiet, distill_config, write_config):
    """The real command in a process of its own (as a user runs it: --quiet must reach libraries
    imported after it is read), its stderr not a terminal."""
    env = {k: v for k, v in os.environ.items() if k not in (progress.PROGRESS_BARS, "TQDM_DISABLE")}
    argv = ["run", str(write_config(distill_config))] + (["--quiet"] if quiet else [])
    done = subprocess.run([sys.executable, "-m", "matryoshka_train", *argv], capture_output=True, env=env, timeout=300)
    out, err = done.stdout.decode(), done.stderr.decode()  # bytes: text mode would turn a bar's \r into \n
    assert done.returncode == 0, err
    assert "Distillation: labelling s" in out  # the run did label and tokenize
    assert "Tokenized s once" in out
    if quiet:
        assert "\r" not in err, err  # no bar of any kind: not ours, not datasets', not the trainer's
        for desc in (LABEL_BAR, "Tokenizing s once", EVAL_BAR):
            assert desc not in err
        return
    # the train split's 14 sentences, then the eval split's 6, in chunks of 5
    assert f"{LABEL_BAR}: 100%" in err and "| 14/14 [" in err and "| 6/6 [" in err
    assert "Tokenizing s once" in err and "14/14" in err
    # one bar per evaluation (before and after), over 1 evaluator x 2 dims; float32 only for MSE
    assert err.count(f"{EVAL_BAR}:   0%") == 2 and "0/2 [" in err
    assert "\r" in err  # the trainer's bar too


def test_bars_follow_the_switch_and_stay_silent_off_the_main_process(monkeypatch, capsys):
    monkeypatch.delenv(progress.PROGRESS_BARS, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert progress.enabled()
    with progress.bar(3, "Counting") as bar:
        bar.update(3)
    assert "Counting: 100%" in capsys.readouterr().err
    for var, value in ((progress.PROGRESS_BARS, "0"), ("RANK", "1")):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            assert not progress.enabled()
            with progress.bar(3, "Counting") as bar:
                bar.update(3)
            assert capsys.readouterr().err == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_training_logs_are_one_bar_or_short_lines_not_dicts(quiet, tiny_config, write_config):
    """The trainer would print a dict per logging step (above its bar, or instead of it under
    --quiet) and one more at the end; the bar carries the latest loss in its postfix instead, and
    --quiet prints one short line per log."""
    cfg = dict(tiny_config, evaluation={"evaluators": []})
    env = {k: v for k, v in os.environ.items() if k not in (progress.PROGRESS_BARS, "TQDM_DISABLE")}
    argv = ["run", str(write_config(cfg))] + (["--quiet"] if quiet else [])
    done = subprocess.run([sys.executable, "-m", "matryoshka_train", *argv], capture_output=True, env=env, timeout=300)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    assert "{'loss'" not in out + err and "'train_runtime'" not in out + err
    if quiet:
        lines = [line for line in out.splitlines() if line.startswith("step ")]
        assert lines[0].startswith("step 1/4 · loss ") and "dim8 " in lines[0] and len(lines) == 4, lines
    else:
        assert "loss=" in err and "lr=" in err  # the bar's postfix (tqdm writes key=value)
        assert not any(line.startswith("step ") for line in out.splitlines())


def test_log_summary_keeps_the_figures_worth_a_glance():
    logs = {"loss": 1.23456, "grad_norm": 3.0, "learning_rate": 2e-5, "dim64": 0.5, "epoch": 0.3, "note": "x"}
    assert progress.log_summary(logs) == {"loss": "1.235", "grad": "3", "lr": "2e-05", "dim64": "0.5"}
    assert "dim64" not in progress.log_summary(logs, dims=False)
