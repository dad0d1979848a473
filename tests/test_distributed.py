"""Scale-out and resume: batch semantics, gather_across_devices, --resume (exact, fast, refusing a
changed config), SIGTERM checkpoints, and two CPU processes (gloo) through accelerate's launcher
and `mtrain run --nproc 2`: identical weights on both ranks, and a SIGTERM + resume that ends with
the weights and logged losses of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from matryoshka_train.cli import main
from matryoshka_train.config import validate
from matryoshka_train.errors import ConfigError

STEPS = 4


def _train_cfg(cfg: dict, out: Path, **training) -> dict:
    cfg = json.loads(json.dumps(cfg))
    cfg["evaluation"] = {"evaluators": []}
    cfg["training"].update({"output_dir": str(out), "max_steps": STEPS, "save_strategy": "no", **training})
    return cfg


def _write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def _losses(out: Path) -> list[tuple[int, float]]:
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in events if e["event"] == "train" and "loss" in e]


def _max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------------------------
# batch semantics and gather_across_devices


def test_batch_lines_print_world_size_and_negatives_gathered_across_devices(tiny_config, monkeypatch):
    from matryoshka_train.training.plan import batch_lines

    tiny_config["loss"]["gather_across_devices"] = True
    config = validate(tiny_config)
    cols = {"tiny": ["anchor", "positive", "negative"]}
    monkeypatch.setenv("WORLD_SIZE", "4")
    lines = batch_lines(config, cols)
    assert lines[0].startswith("Batch: 8 per device × 4 device(s) × 1 accumulation = 32 global · world size 4")
    assert "the last partial batch of an epoch is dropped" in lines[1]
    assert lines[2] == ("  tiny: 63 negatives per anchor, gathered across 4 devices (15 from its own device; "
                        "other rows' positives and hard negatives)")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert "15 negatives per anchor" in batch_lines(config, cols)[1]


def test_gather_across_devices_reaches_the_loss_and_is_refused_where_meaningless(tiny_config, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    from matryoshka_train.losses import LOSSES, build_loss, loss_class

    for name, spec in LOSSES.items():  # the registry's flag matches sentence-transformers' signatures
        import inspect

        assert spec.gathers == ("gather_across_devices" in inspect.signature(loss_class(name).__init__).parameters)
    tiny_config["loss"]["gather_across_devices"] = True
    config = validate(tiny_config)
    model = SentenceTransformer(str(tiny_model_dir))
    loss = build_loss(model, config.loss, config.matryoshka, [32, 16, 8])
    assert loss.loss.gather_across_devices is True

    tiny_config["loss"] = {"name": "triplet", "gather_across_devices": True}
    with pytest.raises(ConfigError, match="gather_across_devices: TripletLoss has no cross-device negatives"):
        validate(tiny_config)
    tiny_config["loss"] = {"name": "mnrl", "kwargs": {"gather_across_devices": True}}
    from matryoshka_train.losses import kwargs_problems

    assert kwargs_problems(validate(tiny_config).loss) == [
        "set loss.gather_across_devices (a key of its own), not loss.kwargs.gather_across_devices"
    ]


def test_nproc_becomes_an_accelerate_launch_of_the_same_command(monkeypatch):
    import torch

    from matryoshka_train.cli import _without_nproc
    from matryoshka_train.training.distributed import launch_argv

    argv = ["run", "c.yaml", "--nproc", "2", "--set", "training.seed=1", "--nproc=2", "--resume"]
    assert _without_nproc(argv) == ["run", "c.yaml", "--set", "training.seed=1", "--resume"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("matryoshka_train.training.distributed._has_accelerate_config", lambda: False)
    monkeypatch.setenv("MASTER_PORT", "29999")
    cmd, env = launch_argv(2, ["run", "c.yaml"])
    assert cmd[:8] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
                       "--main_process_port", "29999", "--num_machines"]
    assert "--multi_gpu" in cmd and cmd[-4:] == ["-m", "matryoshka_train", "run", "c.yaml"]
    assert env["ACCELERATE_USE_CPU"] == "true"


# --------------------------------------------------------------------------------------------
# resume: fast skipping, refusals


def test_fast_skip_starts_the_sampler_at_the_right_batch_under_sharding():
    from accelerate.data_loader import BatchSamplerShard
    from datasets import Dataset

    from matryoshka_train.data.sampler import FastNoDuplicatesBatchSampler
    from matryoshka_train.training.resume import fast_skip_first_batches

    ds = Dataset.from_dict({"anchor": [f"a{i}" for i in range(200)], "positive": [f"p{i}" for i in range(200)]})

    class Loader:  # what the trainer hands over: something with a batch_sampler
        def __init__(self, batch_sampler):
            self.batch_sampler = batch_sampler

    def fail(*_):
        raise AssertionError("the slow path was taken")

    for processes in (1, 2):
        for rank in range(processes):
            sampler = FastNoDuplicatesBatchSampler(ds, batch_size=8, drop_last=True, seed=3)
            shard = BatchSamplerShard(sampler, num_processes=processes, process_index=rank, even_batches=False)
            everything = list(shard)
            loader = Loader(shard if processes > 1 else sampler)
            assert fast_skip_first_batches(loader, 3, fail) is loader
            assert list(loader.batch_sampler) == everything[3:]
            assert list(loader.batch_sampler) == everything  # the skip is for one iteration only


def test_resume_refuses_without_a_checkpoint_and_with_overwrite(tiny_config, tmp_path, capsys):
    cfg = _write(_train_cfg(tiny_config, tmp_path / "out"), tmp_path / "c.yaml")
    assert main(["run", str(cfg), "--resume"]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert f"no complete checkpoint in {tmp_path / 'out'} to resume from" in line
    assert main(["run", str(cfg), "--resume", "--overwrite"]) == 2
    assert "--resume continues the run in training.output_dir and --overwrite replaces it" in capsys.readouterr().err
    assert main(["run", str(cfg), "--resume", str(tmp_path)]) == 2
    assert "is not a complete checkpoint (no trainer_state.json in it)" in capsys.readouterr().err


def test_non_empty_output_dir_message_mentions_resume(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("")
    assert main(["run", str(_write(_train_cfg(tiny_config, out), tmp_path / "c.yaml"))]) == 2
    assert ("already holds files; pass --resume to continue the run in it, --overwrite to replace them"
            in capsys.readouterr().err)


# --------------------------------------------------------------------------------------------
# one process: SIGTERM saves a checkpoint; resume equals the straight run


def test_sigterm_checkpoint_then_resume_equals_the_straight_run(tiny_config, tmp_path, monkeypatch, capsys):
    import accelerate.data_loader

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["run", str(_write(_train_cfg(tiny_config, straight), tmp_path / "a.yaml"))]) == 0

    cfg = _write(_train_cfg(tiny_config, resumed), tmp_path / "b.yaml")
    monkeypatch.setenv("MTRAIN_TEST_SIGTERM_AT_STEP", str(STEPS // 2))
    assert main(["run", str(cfg), "--set", "training.logging_steps=1"]) == 128 + 15
    (line,) = _errors(capsys.readouterr().err)
    assert line == (
        f"error: stopped by SIGTERM at step {STEPS // 2}; checkpoint saved in {resumed / 'checkpoint-2'}. "
        f"To resume: mtrain run {cfg} --set training.logging_steps=1 --resume"
    )
    assert sorted(p.name for p in resumed.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    assert not (resumed / "model.safetensors").exists()
    monkeypatch.delenv("MTRAIN_TEST_SIGTERM_AT_STEP")

    class NoSlowSkip:  # resuming must not iterate the sampler past the seen batches
        def __init__(self, *args, **kwargs):
            raise AssertionError("accelerate's SkipBatchSampler was used")

    monkeypatch.setattr(accelerate.data_loader, "SkipBatchSampler", NoSlowSkip)
    assert main(["run", str(cfg), "--set", "training.logging_steps=1", "--resume"]) == 0
    assert "Resuming from" in capsys.readouterr().out
    assert _max_weight_difference(straight, resumed) <= 1e-5
    assert _losses(resumed) == _losses(straight)
    assert [s for s, _ in _losses(straight)] == list(range(1, STEPS + 1))
    results = json.loads((resumed / "results.json").read_text())
    assert results["resumed_from"] == str(resumed / "checkpoint-2") and results["train"]["steps"] == STEPS


def test_resume_with_a_changed_config_names_the_keys_unless_forced(tiny_config, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    cfg = _write(_train_cfg(tiny_config, out), tmp_path / "c.yaml")
    monkeypatch.setenv("MTRAIN_TEST_SIGTERM_AT_STEP", "1")
    assert main(["run", str(cfg)]) == 143
    monkeypatch.delenv("MTRAIN_TEST_SIGTERM_AT_STEP")
    capsys.readouterr()

    changed = [
        "--set",
        "training.seed=7",
        "--set",
        "training.per_device_train_batch_size=4",
        "--set",
        "matryoshka.dims=[32, 16]",
        "--set",
        "training.logging_steps=2",
    ]
    assert main(["run", str(cfg), "--resume", *changed]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line.startswith(f"error: --resume: the config changed since {out / 'checkpoint-1'} was saved")
    assert "matryoshka.dims.2 (8 -> <unset>)" in line
    assert "training.per_device_train_batch_size (8 -> 4)" in line and "training.seed (42 -> 7)" in line
    assert "logging_steps" not in line  # logging does not change the result
    assert line.endswith("Undo the change(s), or pass --resume-force to continue anyway")

    assert main(["run", str(cfg), "--resume", "--resume-force", "--set", "training.seed=7"]) == 0
    assert "Warning: resuming with a changed key (--resume-force): training.seed (42 -> 7)" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------
# two processes (gloo on CPU)


def _launch(args: list[str], env: dict[str, str], nproc_flag: bool) -> subprocess.CompletedProcess:
    """Two processes: through `mtrain run ... --nproc 2`, or through accelerate's launcher directly."""
    from matryoshka_train.training.distributed import free_port

    env = dict(env, MASTER_PORT=str(free_port()), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if nproc_flag:
        cmd = [sys.executable, "-m", "matryoshka_train", *args, "--nproc", "2"]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            env["MASTER_PORT"],
            "-m",
            "matryoshka_train",
            *args,
        ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_two_processes_gather_negatives_keep_ranks_identical_and_resume_exactly(tiny_config, tmp_path):
    tiny_config["loss"]["gather_across_devices"] = True
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    digests = tmp_path / "digests"
    base = dict(os.environ, MTRAIN_TEST_WEIGHT_DIGEST_DIR=str(digests))

    # 1. straight, through `mtrain run --nproc 2`: both ranks end with bitwise-equal weights;
    #    carbon is measured once (one row in emissions.csv), by the main process
    measured = dict(_train_cfg(tiny_config, straight), carbon={"enabled": True, "offline": True})
    proc = _launch(["run", str(_write(measured, tmp_path / "a.yaml"))], base, nproc_flag=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Batch: 8 per device × 2 device(s) × 1 accumulation = 16 global · world size 2" in proc.stdout
    assert "tiny: 31 negatives per anchor, gathered across 2 devices" in proc.stdout
    ranks = [json.loads((digests / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["step"] == ranks[1]["step"] == STEPS
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    results = json.loads((straight / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["carbon"]["tracked"] and len((straight / "emissions.csv").read_text().splitlines()) == 2

    # 2. the same run, SIGTERM at half-way, through accelerate launch: a checkpoint and the command
    cfg = _write(_train_cfg(tiny_config, resumed), tmp_path / "b.yaml")
    proc = _launch(["run", str(cfg)], dict(base, MTRAIN_TEST_SIGTERM_AT_STEP=str(STEPS // 2)), nproc_flag=False)
    assert proc.returncode != 0
    expected = (
        f"error: stopped by SIGTERM at step {STEPS // 2}; checkpoint saved in {resumed / 'checkpoint-2'}. "
        f"To resume: mtrain run {cfg} --resume --nproc 2"
    )
    assert _errors(proc.stderr) == [expected]  # printed once, by the main process
    assert sorted(p.name for p in (resumed / "checkpoint-2").glob("rng_state*")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]

    # 3. resume as printed: same final weights and logged losses as the straight run
    proc = _launch(["run", str(cfg), "--resume"], base, nproc_flag=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _max_weight_difference(straight, resumed) <= 1e-5
    assert _losses(resumed) == _losses(straight) and len(_losses(straight)) == STEPS
