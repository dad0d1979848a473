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
