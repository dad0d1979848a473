"""Progress bars of our own (per-dim evaluation, tokenizing, teacher labels), under one switch with
the trainer's training bar.

The switch: bars are on unless ``--quiet`` set ``MTRAIN_PROGRESS_BARS=0`` (an environment
variable, so the processes ``--nproc`` and ``accelerate launch`` start see it too), and only the
main process draws them, as only it draws the training bar. Like that bar they go to stderr
whether or not it is a terminal: a run piped to a log file shows the same progress as one in a
terminal, and ``--quiet`` is the one way to have none.

Example:
    ::

        from matryoshka_train.reporting import progress

        with progress.bar(total=len(cells), desc="Per-dim evaluation", leave=False) as bar:
            for cell in cells:
                ...
                bar.update()
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

# `mtrain run --quiet` sets this to 0
PROGRESS_BARS = "MTRAIN_PROGRESS_BARS"


def enabled() -> bool:
    """Bars on? On unless switched off (transformers would switch its own off whenever its log
    level is above WARNING, which is how the CLI keeps library warnings quiet), main process only."""
    return os.environ.get(PROGRESS_BARS, "1") != "0" and int(os.environ.get("RANK", "0") or 0) == 0


def bar(total: int, desc: str, unit: str = "it", initial: int = 0, leave: bool = True) -> Any:
    """A tqdm bar on stderr, or a silent stand-in with the same methods when bars are off."""
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, dynamic_ncols=True,
                disable=not enabled())


@contextlib.contextmanager
def datasets_bars() -> Iterator[None]:
    """Inside the block the ``datasets`` library draws its bars (``Dataset.map(desc=...)``) when
    ours are on, and none when they are off; outside it they stay as they were (the CLI turns them
    off for file reading, where they are noise). A user's ``HF_DATASETS_DISABLE_PROGRESS_BARS=1``
    still wins: ``datasets`` refuses to turn its bars on then."""
    # datasets' own switch; imported here so that `mtrain report`, which imports this package, never imports datasets
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_off = are_progress_bars_disabled()
    with warnings.catch_warnings():  # under the user's variable datasets warns and leaves its bars off
        warnings.simplefilter("ignore")
        (enable_progress_bars if enabled() else disable_progress_bars)()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (disable_progress_bars if was_off else enable_progress_bars)()


# --------------------------------------------------------------------------------------------
# the training bar: one bar whose postfix shows the latest log, instead of a dict per logging step

_SHOWN = ("loss", "grad_norm", "learning_rate")
_SHORT = {"learning_rate": "lr", "grad_norm": "grad"}


def log_summary(logs: dict[str, Any], dims: bool = True) -> dict[str, str]:
    """The figures of one trainer log worth showing, short-named and formatted: loss, grad norm,
    learning rate and (``dims``) each dim's loss; eval logs keep their own names."""
    out = {}
    for key, value in logs.items():
        if not isinstance(value, (int, float)) or key in ("epoch", "total_flos"):
            continue
        if key in _SHOWN or key.startswith("eval_") or (dims and key.startswith("dim")):
            out[_SHORT.get(key, key)] = f"{value:.4g}"
    return out


def compact_training_output(trainer: Any) -> None:
    """Put our callbacks in place of transformers' ProgressCallback and PrinterCallback on
    ``trainer``: the bar shows the latest loss, grad norm and lr in its postfix (per-dim losses stay
    in metrics.jsonl and the trackers); without bars (``--quiet``) each log is one short line. The
    trainer's end-of-training summary dict is not printed: `mtrain run` prints its own."""
    # transformers: only a training run needs these; `mtrain report` imports this module without it
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class PostfixProgress(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = log_summary(logs, dims=False)
                if shown and "train_runtime" not in logs:
                    self.training_bar.set_postfix(shown, refresh=False)

    class LinePrinter(PrinterCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if not state.is_local_process_zero or not logs or "train_runtime" in logs:
                return
            shown = log_summary(logs)
            if shown:
                total = f"/{state.max_steps}" if state.max_steps else ""
                print(f"step {state.global_step}{total} · " + " · ".join(f"{k} {v}" for k, v in shown.items()),
                      flush=True)

    for theirs, ours in ((ProgressCallback, PostfixProgress), (PrinterCallback, LinePrinter)):
        if any(type(cb) is theirs for cb in trainer.callback_handler.callbacks):
            trainer.remove_callback(theirs)
            trainer.add_callback(ours)
