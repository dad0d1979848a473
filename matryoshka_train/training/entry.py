"""`mtrain run` as a function: one stage, or several in order (:mod:`.stages`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config.schema import RunConfig
from ..reporting.publish import push_after_run
from . import distributed
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
    With ``hub.repo_id`` set, the final output is pushed to the Hub at the end (main process only);
    a failed push raises :class:`~matryoshka_train.reporting.publish.PushFailed` with the outputs kept.
    """
    if not config.stages:
        results = run_single(config, overwrite, echo, resume, resume_force, resume_hint, callbacks)
    else:
        results = run_stages(config, overwrite, echo, resume, resume_force, resume_hint)
    if distributed.is_main():
        # once, for the final output (of all stages), after results.json and the card are written
        push_after_run(config, echo)
    return results
