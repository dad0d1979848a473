"""Faults during training: a NaN loss, out of GPU memory, a full disk during a checkpoint, Ctrl-C.
Each ends the run with one message saying what happened and what was kept, and nothing already
saved is lost or overwritten with broken weights."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest
import torch

from matryoshka_train.cli import main
from matryoshka_train.config import validate
from matryoshka_train.errors import TrainingAborted
from matryoshka_train.training.entry import run


def _quick(cfg: dict, **training) -> dict:
    """No evaluation (these tests are about training), checkpoints every step."""
    cfg["evaluation"] = {"evaluators": []}
    cfg["training"].update({"save_strategy": "steps", "save_steps": 1, **training})
    return cfg


def _finite(path: Path) -> bool:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path))
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _errors(stderr: str) -> list[str]:
    """The error lines (stderr also carries the training progress bar)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".partial"))


class NanAtCall(torch.nn.Module):
    """Wraps a loss and returns NaN on its k-th call (the k-th training step)."""

    def __init__(self, inner: torch.nn.Module, k: int):
        super().__init__()
        self.inner, self.k, self.calls = inner, k, 0

    def forward(self, features, labels):
        self.calls += 1
        loss = self.inner(features, labels)
        if self.calls != self.k:
            return loss
        if isinstance(loss, dict):  # per-dim terms: poison every one
            return {key: value * float("nan") for key, value in loss.items()}
        return loss * float("nan")


def test_nan_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(tiny_config, monkeypatch):
    from matryoshka_train.training import plan as training

    real = training.build_loss
    monkeypatch.setattr(training, "build_loss", lambda *a, **k: NanAtCall(real(*a, **k), 3))
    cfg = _quick(tiny_config, max_steps=6, save_total_limit=5)
    out = Path(cfg["training"]["output_dir"])

    with pytest.raises(TrainingAborted) as info:
        run(validate(cfg), echo=lambda _: None)

    message = str(info.value)
    assert "the loss became nan at step 3" in message
    assert f"the last good checkpoint is {out / 'checkpoint-2'}" in message
    assert "final model was NOT written" in message and "training.learning_rate" in message
    assert "\n" not in message
    assert not (out / "model.safetensors").exists()          # the final model was not written
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert _finite(out / "checkpoint-2") and not _leftovers(out)


def test_a_huge_learning_rate_ends_in_a_clear_nan_message(tiny_config, write_config, capsys):
    cfg = _quick(tiny_config, learning_rate=1e30, max_steps=8, save_steps=100)
    out = Path(cfg["training"]["output_dir"])
    assert main(["run", str(write_config(cfg))]) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: the ")
    assert "NaN" in err[0] or "nan" in err[0]
    assert "at step " in err[0] and "no checkpoint had been saved" in err[0]
    assert not (out / "model.safetensors").exists()


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_loadable(tiny_config, monkeypatch):
    from sentence_transformers import SentenceTransformerTrainer

    real_save = SentenceTransformerTrainer._save
    calls = []

    def save_then_fill_the_disk(self, output_dir=None, state_dict=None):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: some files written, then the disk is full
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "model.safetensors"))
        return real_save(self, output_dir, state_dict)

    monkeypatch.setattr(SentenceTransformerTrainer, "_save", save_then_fill_the_disk)
    cfg = _quick(tiny_config, max_steps=4, save_total_limit=1)
    out = Path(cfg["training"]["output_dir"])

    with pytest.raises(TrainingAborted) as info:
        run(validate(cfg), echo=lambda _: None)

    message = str(info.value)
    assert "could not write to disk during training at step 2: No space left on device" in message
    assert f"The last complete checkpoint, {out / 'checkpoint-1'}, is intact" in message
    assert "\n" not in message
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"]  # no half-written checkpoint-2
    assert not _leftovers(out)
    assert _finite(out / "checkpoint-1")


def test_checkpoints_are_complete_and_still_rotate(tiny_config):
    cfg = _quick(tiny_config, max_steps=4, save_total_limit=2)
    out = Path(cfg["training"]["output_dir"])
    run(validate(cfg), echo=lambda _: None)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    for name in ("checkpoint-3", "checkpoint-4"):
        assert (out / name / "trainer_state.json").is_file() and (out / name / "optimizer.pt").is_file()
    assert _finite(out / "checkpoint-4") and not _leftovers(out)


def test_out_of_memory_suggests_a_cached_loss_or_a_smaller_batch(tiny_config, write_config, monkeypatch, capsys):
    from sentence_transformers import SentenceTransformerTrainer

    def no_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SentenceTransformerTrainer, "compute_loss", no_memory)
    cfg = _quick(tiny_config, max_steps=2)
    assert main(["run", str(write_config(cfg))]) == 1
    (line,) = _errors(capsys.readouterr().err)
    assert line.startswith("error: out of GPU memory at step 0")
    assert "switch loss.name from MultipleNegativesRankingLoss to CachedMultipleNegativesRankingLoss" in line
    assert "lower training.per_device_train_batch_size (now 8)" in line

    cfg["loss"] = {"name": "cached_mnrl", "kwargs": {"mini_batch_size": 4}}
    cfg["training"]["output_dir"] += "-cached"
    assert main(["run", str(write_config(cfg))]) == 1
    assert "lower loss.kwargs.mini_batch_size" in capsys.readouterr().err


def test_ctrl_c_saves_a_resumable_checkpoint_and_prints_the_command(tiny_config, write_config, monkeypatch, capsys):
    """A real SIGINT at the end of step 2: the step completes, checkpoint-2 is written, exit 130."""
    import os
    import signal

    from transformers.trainer_callback import DefaultFlowCallback

    real = DefaultFlowCallback.on_step_end

    def ctrl_c_at_step_2(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, args, state, control, **kwargs)

    monkeypatch.setattr(DefaultFlowCallback, "on_step_end", ctrl_c_at_step_2)
    cfg = _quick(tiny_config, max_steps=6, save_strategy="no")
    out = Path(cfg["training"]["output_dir"])
    path = write_config(cfg)
    before = signal.getsignal(signal.SIGINT)  # the default, or SIG_IGN where pytest runs in a background job
    assert main(["run", str(path)]) == 130
    (line,) = _errors(capsys.readouterr().err)
    assert line == (f"error: stopped by SIGINT at step 2; checkpoint saved in {out / 'checkpoint-2'}. "
                    f"To resume: mtrain run {path} --resume")
    assert (out / "checkpoint-2" / "optimizer.pt").is_file() and _finite(out / "checkpoint-2")
    assert not (out / "model.safetensors").exists() and not _leftovers(out)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_a_second_ctrl_c_saves_the_model_on_the_side(tiny_config, write_config, monkeypatch, capsys):
    """KeyboardInterrupt in the middle of a step (a second Ctrl-C) cannot make a checkpoint: the
    model so far is saved as DIR/interrupted instead."""
    from sentence_transformers import SentenceTransformer
    from transformers.trainer_callback import DefaultFlowCallback

    real = DefaultFlowCallback.on_step_end

    def interrupt_at_step_2(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt
        return real(self, args, state, control, **kwargs)

    monkeypatch.setattr(DefaultFlowCallback, "on_step_end", interrupt_at_step_2)
    cfg = _quick(tiny_config, max_steps=6, save_strategy="no")
    out = Path(cfg["training"]["output_dir"])
    assert main(["run", str(write_config(cfg))]) == 1
    (line,) = _errors(capsys.readouterr().err)
    saved = out / "interrupted"
    assert line == (
        f"error: interrupted at step 2; the model so far is saved in {saved}. To continue from it: "
        f"mtrain run CONFIG --set model.name_or_path={saved} --set training.output_dir=NEW_DIR"
    )
    assert SentenceTransformer(str(saved)).encode(["a river"]).shape == (1, 32)
    assert not (out / "model.safetensors").exists() and not _leftovers(out)


def test_the_nan_guard_sees_every_step_not_only_logged_ones(tiny_config, monkeypatch):
    """logging_steps=10 with 4 steps logs nothing before the end; the guard must still fire at step 2."""
    from matryoshka_train.training import plan as training

    real = training.build_loss
    monkeypatch.setattr(training, "build_loss", lambda *a, **k: NanAtCall(real(*a, **k), 2))
    cfg = _quick(tiny_config, max_steps=4, logging_steps=10, save_strategy="no")
    with pytest.raises(TrainingAborted, match="at step 2"):
        run(validate(cfg), echo=lambda _: None)


def test_weights_finite_helper():
    from matryoshka_train.training.faults import weights_finite

    layer = torch.nn.Linear(2, 2)
    assert weights_finite(layer)
    with torch.no_grad():
        layer.weight[0, 0] = math.inf
    assert not weights_finite(layer)
    mixed = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).to(torch.bfloat16))
    with torch.no_grad():
        mixed[0].weight.fill_(1e30)  # large but finite weights are finite: the check does not overflow
    assert weights_finite(mixed)
    with torch.no_grad():
        mixed[1].bias[1] = math.nan
    assert not weights_finite(mixed)
    assert weights_finite(torch.nn.Embedding(3, 2).requires_grad_(False))
