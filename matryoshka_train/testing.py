"""Test hooks, switched on by environment variables (documented in docs/distributed.md).

They let the test suite act inside training processes it cannot reach otherwise (processes started
by ``accelerate launch``), and do nothing unless their variable is set:

* ``MTRAIN_TEST_SIGTERM_AT_STEP=k``: every process sends itself SIGTERM at the end of step k;
* ``MTRAIN_TEST_WEIGHT_DIGEST_DIR=DIR``: every process writes a digest of its final weights to
  ``DIR/rank-<r>.json`` (equal digests mean bitwise-equal weights).

Production code knows them only through :func:`callbacks` and :func:`after_training`, called
once each by the training loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

SIGTERM_AT_STEP = "MTRAIN_TEST_SIGTERM_AT_STEP"
WEIGHT_DIGEST_DIR = "MTRAIN_TEST_WEIGHT_DIGEST_DIR"


class SigtermAtStep(TrainerCallback):
    """Sends this process SIGTERM at the end of step ``step`` (as a scheduler preempting the job would)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def callbacks() -> list[TrainerCallback]:
    """The trainer callbacks the environment asks for (none in normal use)."""
    at = os.environ.get(SIGTERM_AT_STEP)
    return [SigtermAtStep(int(at))] if at else []


def weight_digest(model: Any) -> str:
    """sha256 over every parameter's bytes, in name order: equal digests mean bitwise-equal weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu()
        t = t.float() if t.dtype == torch.bfloat16 else t
        h.update(name.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def after_training(model: Any, step: int) -> None:
    """With MTRAIN_TEST_WEIGHT_DIGEST_DIR set, every process writes its weights' digest."""
    target = os.environ.get(WEIGHT_DIGEST_DIR)
    if not target:
        return
    rank = int(os.environ.get("RANK", "0") or 0)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    Path(target).mkdir(parents=True, exist_ok=True)
    data = {"rank": rank, "world_size": world, "step": step, "sha256": weight_digest(model)}
    (Path(target) / f"rank-{rank}.json").write_text(json.dumps(data), encoding="utf-8")
