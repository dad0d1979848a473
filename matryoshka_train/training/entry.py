"""`mtrain run` as a function: one stage, or several in order (:mod:`.stages`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config.schema import RunConfig
from .loop import run_single
from .stages import run_stages


def run(
    config: RunConfig,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    resume: str | bool | None = None,
    resume_force: bool = False,
    resume_hint: str | None = None,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train as the config says and write the outputs. Returns the content of results.json (an
    empty dict on the processes other than the main one).

    ``resume``: None starts a new run; True (or "") continues from the newest complete checkpoint in
    training.output_dir; a path continues from that checkpoint. ``resume_hint`` is the command an
    interrupted run prints to be resumed (the CLI fills in the config path and overrides).
    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (for programmatic use, e.g.
    the training benchmark's step timer). A multi-stage config runs :func:`run_single` per stage.
    """
    if not config.stages:
        return run_single(config, overwrite, echo, resume, resume_force, resume_hint, callbacks)
    return run_stages(config, overwrite, echo, resume, resume_force, resume_hint)
