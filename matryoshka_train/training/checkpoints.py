"""Checkpoints that are either complete or absent.

The trainer writes ``checkpoint-N`` file by file, straight into the output directory, and then
deletes old checkpoints beyond ``save_total_limit``. A crash or a full disk half-way leaves a
``checkpoint-N`` that looks like the newest one but does not load. Here every checkpoint is
written into a hidden staging directory (``.partial-checkpoint-N``) and renamed to
``checkpoint-N`` only once every file is on disk; a rename within one directory is atomic, so a
``checkpoint-N`` directory is always a whole checkpoint. Old checkpoints are rotated out only
after the new one is in place, so a failed save never costs the previous checkpoint.

Under several processes every process writes its own files (its RNG state) into the same staging
directory; barriers make sure all of them are written before the main process renames it, and that
no process goes on (or starts the next checkpoint) before the rename is done.

The same rule holds for whole models we write on the side (the ``interrupted`` model):
:func:`save_model_atomically`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from transformers.trainer_utils import rotate_checkpoints

STAGING_PREFIX = ".partial-"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def make_checkpoints_atomic(trainer: Any) -> None:
    """Route the trainer's checkpoint saves through a staging directory (patches this instance only)."""

    original_save = trainer._save_checkpoint
    original_output_dir = trainer._get_output_dir

    def save_checkpoint(model: Any, trial: Any) -> None:
        run_dir = Path(original_output_dir(trial=trial))
        name = f"checkpoint-{trainer.state.global_step}"
        staging_root = run_dir / f"{STAGING_PREFIX}{name}"
        staging = staging_root / name
        renames = trainer.args.should_save  # the main process (of each node with save_on_each_node)
        if renames:
            shutil.rmtree(staging_root, ignore_errors=True)
        wait = trainer.accelerator.wait_for_everyone
        wait()
        # inside the original, "the output dir" is the staging root, so it writes staging_root/checkpoint-N
        # and its own rotation sees one checkpoint and deletes nothing
        trainer._get_output_dir = lambda trial=None: str(staging_root)
        try:
            original_save(model, trial)
        except BaseException:
            shutil.rmtree(staging_root, ignore_errors=True)
            raise
        finally:
            trainer._get_output_dir = original_output_dir
        wait()  # every process's files are in the staging directory
        if renames:
            final = run_dir / name
            _point_best_at(trainer, staging, run_dir)
            if final.exists():  # a checkpoint of the same step from an earlier attempt
                shutil.rmtree(final)
            os.replace(staging, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=trainer.args.save_total_limit,
                best_model_checkpoint=trainer.state.best_model_checkpoint,
                use_mtime=True,
            )
        else:
            _point_best_at(trainer, None, run_dir)
        wait()  # the checkpoint is in place before anyone goes on

    trainer._save_checkpoint = save_checkpoint


def _point_best_at(trainer: Any, staging: Path | None, run_dir: Path) -> None:
    """The trainer records the best checkpoint by path; make it the final path, not the staging one,
    both in memory and in the trainer_state.json being renamed into place."""
    state = trainer.state
    if state.best_global_step:
        best = run_dir / f"checkpoint-{state.best_global_step}"
        if best.exists() or state.best_global_step == state.global_step:
            state.best_model_checkpoint = str(best)
    state_file = staging / "trainer_state.json" if staging is not None else None
    if state_file is not None and state_file.is_file():
        data = json.loads(state_file.read_text(encoding="utf-8"))
        data["best_model_checkpoint"] = state.best_model_checkpoint
        state_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The whole checkpoints in ``run_dir``, oldest step first (staging directories never count)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def save_model_atomically(model: Any, target: str | os.PathLike) -> Path:
    """``model.save(target)`` through a staging directory: ``target`` appears only when complete."""
    target = Path(target)
    staging = target.with_name(f"{STAGING_PREFIX}{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save(str(staging))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
