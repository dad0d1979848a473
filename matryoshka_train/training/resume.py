"""``mtrain run CONFIG --resume``: continue a run from its newest complete checkpoint.

The trainer restores the model, optimizer, scheduler, RNG states (one file per process) and the
step from a ``checkpoint-N`` directory. What is ours:

- **which checkpoint**: the newest *complete* one (:mod:`matryoshka_train.checkpoints` never leaves
  a half-written ``checkpoint-N``), or the one given with ``--resume PATH``;
- **is it the same run**: the resolved config saved in the output directory is compared with the
  one resuming, key by key, on what determines the result (data, model, loss, Matryoshka dims and
  weights, batch size, accumulation, learning rate, schedule, seed, precision, and the number of
  processes); any change refuses to resume, naming the keys, unless ``--resume-force``;
- **fast data skipping**: the trainer skips the batches already seen in the current epoch by
  iterating the batch sampler past them. For our no-duplicates sampler that skip is an index into
  the epoch's batch list (:func:`fast_skip_first_batches`), so no batch before it is built;
- **the command to resume** that an interrupted run prints (:func:`resume_command`).
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import transformers.trainer as hf_trainer
import yaml

from ..data.sampler import FastNoDuplicatesBatchSampler
from ..errors import ConfigError
from .checkpoints import last_checkpoint

RESOLVED = "config.resolved.yaml"

# keys that change how a run is logged, evaluated, saved or measured, but not the weights it ends with
NOT_RESULT_DETERMINING = (
    "training.output_dir", "training.logging_steps", "training.eval_strategy", "training.eval_steps",
    "training.save_strategy", "training.save_steps", "training.save_total_limit", "training.save_only_model",
    "training.load_best_model_at_end", "training.metric_for_best_model", "training.report_to",
    "training.per_device_eval_batch_size", "evaluation", "carbon", "distill.cache_dir", "distill.chunk_size",
    "distill.batch_size",
    # speed only: the same token ids, and the same loss up to float rounding
    "training.pretokenize", "training.sorted_forward", "training.packed_forward", "training.compile_layers",
    "training.merge_columns", "training.columnar_fetch", "training.fused_loss",
    "training.memory_probe", "training.forward_chunk_tokens",
    "training.forward_chunk_min_tokens", "training.pad_to_multiple_of", "training.nan_check",
    "training.dataloader_num_workers", "training.dataloader_prefetch_factor",
)


def find_checkpoint(output_dir: Path, asked: str | None) -> Path:
    """The checkpoint to resume from: ``asked`` (a path) or the newest complete one in output_dir."""
    if asked:
        path = Path(asked)
        if not (path / "trainer_state.json").is_file():
            raise ConfigError(
                f"{path} is not a complete checkpoint (no trainer_state.json in it); give a checkpoint-N "
                "directory, or --resume alone for the newest one in training.output_dir",
                where="--resume",
            )
        return path
    found = last_checkpoint(output_dir)
    if found is None:
        raise ConfigError(
            f"no complete checkpoint in {output_dir} to resume from; set training.save_strategy: steps "
            "(checkpoints every save_steps) for runs you may need to resume, or start without --resume",
            where="--resume",
        )
    return found


def checkpoint_world_size(checkpoint: Path) -> int:
    """How many processes wrote a checkpoint: one RNG state file per process."""
    per_rank = list(checkpoint.glob("rng_state_*.pth"))
    return len(per_rank) if per_rank else 1


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': [1, {'c': 2}]}} -> {'a.b.0': 1, 'a.b.1.c': 2}; empty containers stay values."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(data, list) and data:
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: data}


def _determines_result(key: str) -> bool:
    return not any(key == k or key.startswith(k + ".") for k in NOT_RESULT_DETERMINING)


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key (old -> new)' for every result-determining key that differs between two resolved configs."""
    old, new = flatten(saved), flatten(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        if not _determines_result(key):
            continue
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a != b:
            changes.append(f"{key} ({_short(a)} -> {_short(b)})")
    return changes


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_same_run(output_dir: Path, checkpoint: Path, resolved_yaml: str, world: int, force: bool) -> list[str]:
    """Refuse (ConfigError) when what determines the result changed since the run started; with
    ``force``, return the changes instead (to be printed as a warning)."""
    saved_file = output_dir / RESOLVED
    changes = []
    if saved_file.is_file():
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
        changes = changed_keys(saved, yaml.safe_load(resolved_yaml))
    was = checkpoint_world_size(checkpoint)
    if was != world:
        changes.append(f"number of processes ({was} -> {world}; the global batch and the data order depend on it)")
    if changes and not force:
        raise ConfigError(
            f"the config changed since {checkpoint} was saved, so resuming would not continue the same run: "
            + "; ".join(changes)
            + ". Undo the change(s), or pass --resume-force to continue anyway",
            where="--resume",
        )
    return changes


def resume_command(config_path: str | None, overrides: list[str], world: int, local_world: int) -> str:
    """The command that continues an interrupted run (printed when it stops on a signal)."""
    parts = ["mtrain", "run", config_path or "CONFIG"]
    for item in overrides:
        parts += ["--set", item]
    parts.append("--resume")
    if world > 1 and world == local_world:
        parts += ["--nproc", str(world)]
    command = " ".join(shlex.quote(p) if p != "CONFIG" else p for p in parts)
    if world > local_world:  # several machines: the same launch on every node, with --resume
        command = f"your launch command on every node, ending in: {command}"
    return command


# --------------------------------------------------------------------------------------------
# skipping the batches already trained on, without building them


def fast_skip_first_batches(dataloader: Any, num_batches: int, fallback: Any) -> Any:
    """What ``accelerate.skip_first_batches`` does, in O(1) for our no-duplicates sampler: the
    sampler is told to start its next epoch at the right batch. Under several processes the
    sampler is wrapped in accelerate's ``BatchSamplerShard``, which deals whole batches round-robin,
    so k batches of this process are k × processes batches of the sampler (k when batches are split)."""

    outer = getattr(dataloader, "batch_sampler", None)
    inner = getattr(outer, "batch_sampler", None)
    if isinstance(outer, FastNoDuplicatesBatchSampler):
        outer.skip_batches = num_batches
        return dataloader
    if isinstance(inner, FastNoDuplicatesBatchSampler) and type(outer).__name__ == "BatchSamplerShard":
        per_step = 1 if outer.split_batches else outer.num_processes
        inner.skip_batches = num_batches * per_step
        return dataloader
    return fallback(dataloader, num_batches)


@contextlib.contextmanager
def fast_data_skip() -> Iterator[None]:
    """Route the trainer's resume skip through :func:`fast_skip_first_batches` while training."""

    original = hf_trainer.skip_first_batches
    hf_trainer.skip_first_batches = lambda dl, num_batches=0: fast_skip_first_batches(dl, num_batches, original)
    try:
        yield
    finally:
        hf_trainer.skip_first_batches = original
