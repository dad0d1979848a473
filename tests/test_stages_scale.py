"""Multi-stage runs scale out and resume (issue #18): a two-stage config (triplets/MNRL, then
scored pairs/CosineSimilarityLoss) as two CPU processes, and a SIGTERM in stage 2 resumed with the
printed command to the weights of an uninterrupted run; runs save checkpoints by default, and
`check` warns when save_steps is set while saving is off."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import REPO
from test_distributed import STEPS, _errors, _launch, _max_weight_difference, _write

from matryoshka_train import testing
from matryoshka_train.cli import main
from matryoshka_train.config import validate


def _staged(tiny_config: dict, data_dir: Path, out: Path) -> dict:
    cfg = json.loads(json.dumps(tiny_config))
    cfg["evaluation"] = {"evaluators": []}
    cfg["datasets"][0].pop("eval")
    cfg["training"].update(output_dir=str(out), max_steps=STEPS, logging_steps=1)
    cfg["stages"] = [
        {"name": "triplets"},
        {
            "name": "sts",
            "datasets": [{"name": "sts", "source": {"path": str(REPO / "tests" / "data" / "sts-pairs.jsonl")},
                          "columns": ["sentence1", "sentence2", "score"]}],
            "loss": {"name": "CosineSimilarityLoss"},
            "training": {"batch_sampler": "batch_sampler"},
        },
    ]
    return cfg


def test_checkpoints_are_saved_by_default_and_check_warns_when_save_steps_is_ignored(tiny_config, tmp_path, capsys):
    assert validate(tiny_config).training.save_strategy == "steps"
    cfg = _write(dict(tiny_config, evaluation={"evaluators": []}), tmp_path / "c.yaml")
    assert main(["check", str(cfg), "--set", "training.save_steps=5"]) == 0
    assert "save_steps is 5 but" not in capsys.readouterr().out
    assert main(["check", str(cfg), "--set", "training.save_steps=5", "--set", "training.save_strategy=no"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "training.save_steps is 5 but training.save_strategy is 'no', so no checkpoints are saved" in text
    assert main(["check", str(cfg), "--set", "training.save_strategy=no"]) == 0
    captured = capsys.readouterr()
    assert "save_steps is" not in captured.out + captured.err  # the default save_steps is not a request


def test_two_stages_as_two_processes_run_in_step_and_write_once(tiny_config, data_dir, tmp_path):
    out, digests = tmp_path / "out", tmp_path / "digests"
    cfg = _write(_staged(tiny_config, data_dir, out), tmp_path / "staged.yaml")
    env = dict(os.environ, MTRAIN_TEST_WEIGHT_DIGEST_DIR=str(digests))
    proc = _launch(["run", str(cfg)], env, nproc_flag=True)
    assert proc.returncode == 0, "\n".join(_errors(proc.stderr)) + proc.stderr[-3000:]
    assert proc.stdout.count("=== Stage 2 (sts) of 2") == 1  # printed by the main process only
    assert proc.stdout.count("=== All 2 stages") == 1
    ranks = [json.loads((digests / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["sha256"] == ranks[1]["sha256"]  # stage 2's final weights
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["stages"]] == ["triplets", "sts"]
    assert all(s["world_size"] == 2 for s in results["stages"]) and results["train"]["steps"] == 2 * STEPS
    stage2 = out / "stage-2-sts"
    assert (out / "model.safetensors").read_bytes() == (stage2 / "model.safetensors").read_bytes()


def test_sigterm_in_stage_two_then_resume_as_printed_equals_the_straight_run(
    tiny_config, data_dir, tmp_path, monkeypatch, capsys
):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["run", str(_write(_staged(tiny_config, data_dir, straight), tmp_path / "a.yaml"))]) == 0

    cfg = _write(_staged(tiny_config, data_dir, resumed), tmp_path / "b.yaml")
    calls = []

    def sigterm_in_stage_two():  # the hook, for the second stage only
        calls.append(1)
        return [testing.SigtermAtStep(STEPS // 2)] if len(calls) == 2 else []

    monkeypatch.setattr(testing, "callbacks", sigterm_in_stage_two)
    assert main(["run", str(cfg)]) == 128 + 15
    (line,) = _errors(capsys.readouterr().err)
    checkpoint = resumed / "stage-2-sts" / f"checkpoint-{STEPS // 2}"
    prefix = f"error: stopped by SIGTERM at step {STEPS // 2}; checkpoint saved in {checkpoint}. To resume: "
    assert line.startswith(prefix)
    command = line[len(prefix):]
    assert command == f"mtrain run {cfg} --resume"
    monkeypatch.undo()

    assert main(command.split()[1:]) == 0
    printed = capsys.readouterr().out
    assert "Stage 1 (triplets) of 2: complete in" in printed and "skipped" in printed
    assert f"Resuming from {checkpoint}" in printed
    assert _max_weight_difference(straight / "stage-1-triplets", resumed / "stage-1-triplets") == 0
    assert _max_weight_difference(straight, resumed) <= 1e-5
    results = json.loads((resumed / "results.json").read_text())
    assert results["stages"][1]["resumed_from"] == str(checkpoint) and results["train"]["steps"] == 2 * STEPS

    # a finished stage whose config changed is refused, naming the key
    assert main([*command.split()[1:], "--set", "training.seed=7"]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert "the config of stage 1 (triplets) changed since it finished" in line and "training.seed (42 -> 7)" in line
