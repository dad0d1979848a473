"""Callbacks of our own: the metrics log (metrics.jsonl) and the rotation's orthogonality. The NaN
guard and the preemption guard are in :mod:`.faults`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

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
