"""Callbacks of our own: the metrics log (metrics.jsonl), the rotation's orthogonality, and the
trackers (``training.report_to``) held open until the run's final figures reach them. The NaN guard
and the preemption guard are in :mod:`.faults`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.integrations import get_reporting_integration_callbacks

from ..models.rotation import orthogonalize
from ..reporting import redact


class KeepOrthogonal(TrainerCallback):
    """After every optimizer step, pull the rotation (matryoshka.rotation) back onto the orthogonal
    matrices, so it never changes a full-size cosine (matrix products only: no device read)."""

    def __init__(self, dense: Any):
        self.dense = dense

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        orthogonalize(self.dense)


class MetricsLog(TrainerCallback):
    """Appends one JSON object per log or evaluation event to metrics.jsonl (main process only)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(redact.redact(json.dumps(record)) + "\n")

    def keep_until(self, step: int) -> dict[str, Any] | None:
        """On resume: drop the records of steps after the checkpoint (they will be logged again) and
        return the baseline evaluation's results, if the run logged one."""
        if not self.path.is_file():
            return None
        kept, before = [], None
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if record.get("event") == "eval_before":
                before = record.get("results")
            if record.get("event") == "eval_before" or int(record.get("step", 0)) <= step:
                kept.append(line)
        if self.enabled:
            redact.write_text(self.path, "".join(line + "\n" for line in kept))
        return before

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        event = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        self.write({"event": event, "step": state.global_step, "epoch": state.epoch, **logs})


class TrackersHeldOpen:
    """The trainer's tracker callbacks (TensorBoard, W&B, MLflow, Trackio, … from
    ``training.report_to``) kept open after ``trainer.train()`` returns, so that what the run
    learns afterwards reaches them too: the final evaluation's per-dim metrics and the carbon
    figures, which are only known once the final evaluation has run and the meter has stopped.

    Each tracker ends its run in ``on_train_end`` (TensorBoard closes its writer, MLflow ends its
    run, Trackio finishes), and logging after that would open a second file or run. So their
    ``on_train_end`` is put off from the trainer's call to :meth:`close`, which calls it for real;
    :meth:`log` hands figures to the trackers alone (not to the metrics log or the printed logs).
    Every way a run ends closes them (the finished run, an abort, the other processes).

    Example:
        ::

            held = TrackersHeldOpen(trainer)
            trainer.train()
            held.log({"eval_dev_dim64_cosine_accuracy": 0.91, "carbon/emissions_kg": 2e-6})
            held.close()
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer
        kinds = tuple(get_reporting_integration_callbacks(trainer.args.report_to))
        self.callbacks = [cb for cb in trainer.callback_handler.callbacks if kinds and isinstance(cb, kinds)]
        for cb in self.callbacks:
            cb.on_train_end = _put_off  # an instance attribute, over the class's method, until close()

    def log(self, figures: dict[str, Any]) -> None:
        """Numbers only (a tracker's scalars); a None (e.g. carbon not measured) is left out."""
        numbers = {k: float(v) for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        t = self.trainer
        for cb in self.callbacks if numbers else []:
            cb.on_log(t.args, t.state, t.control, logs=dict(numbers), model=t.model)

    def close(self) -> None:
        t, callbacks, self.callbacks = self.trainer, self.callbacks, []
        for cb in callbacks:
            vars(cb).pop("on_train_end", None)
            cb.on_train_end(t.args, t.state, t.control, model=t.model, processing_class=t.processing_class)


def _put_off(*args: Any, **kwargs: Any) -> None:
    return None


def final_figures(metrics: dict[str, float] | None, carbon: dict[str, Any] | None) -> dict[str, Any]:
    """What the trackers get at the end of a run: the final evaluation's metrics as the trainer
    names evaluation metrics (``eval_<evaluator>_dim<d>_<metric>``, so TensorBoard shows them as
    ``eval/...`` beside the periodic evaluations, at the last step) and the carbon figures as
    ``carbon/energy_kwh``, ``carbon/emissions_kg`` and ``carbon/duration_s`` (the trainer's
    trackers file keys without an ``eval_`` prefix under ``train/``)."""
    figures: dict[str, Any] = {f"eval_{k}": v for k, v in (metrics or {}).items()}
    carbon = carbon or {}
    if carbon.get("tracked"):
        figures.update({f"carbon/{k}": carbon.get(k) for k in ("energy_kwh", "emissions_kg", "duration_s")})
    return figures
