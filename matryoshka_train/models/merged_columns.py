"""One encoder call for all of a batch's text columns (``training.merge_columns``).

sentence-transformers 6 embeds a loss's columns with ``embed_columns``. The first column (the
anchors) gets a forward of its own; the other columns (positives, negatives) share one. Merging pads
every row to the widest column, so short queries next to long documents would pay for the
documents' width, and keeping the anchors apart avoids that.

The packed forward (``packed_forward.py``) runs real tokens only, so that padding costs nothing
there. One call instead of two then halves the host's work of running the encoder: on an H200 the
packed step waits on the host (0.117 s of kernels in a 0.13-0.18 s step, docs/benchmarks.md), so
the host's work is what sets its speed.

Same embeddings (the rows are the same, in a different call), so the same loss and gradients with
dropout off; with dropout on, the masks are drawn differently, as for any change of batching.
:func:`merged` is a context manager: for its duration, every loss module of sentence-transformers
that calls ``embed_columns`` gets it with ``separate_first=False``; on exit the original is back.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

_PREFIX = "sentence_transformers."


def _original() -> Any:
    # sentence-transformers: the function its losses embed their columns with
    from sentence_transformers.base.losses import merged_forward

    return merged_forward.embed_columns


def all_columns_at_once(model: Any, features_list: Iterable[dict[str, Any]], separate_first: bool = True) -> Any:
    """``embed_columns`` with the anchor column merged in with the others (``separate_first`` ignored)."""
    return _original()(model, features_list, separate_first=False)


@contextmanager
def merged() -> Iterator[list[str]]:
    """Within the block, sentence-transformers' losses embed all columns in one call. Yields the
    names of the modules patched (empty: this sentence-transformers has no ``embed_columns``)."""
    try:
        original = _original()
    except ImportError:
        yield []
        return
    patched = [
        name for name, module in list(sys.modules.items())
        if name.startswith(_PREFIX) and module is not None and getattr(module, "embed_columns", None) is original
        and name != original.__module__
    ]
    for name in patched:
        sys.modules[name].embed_columns = all_columns_at_once
    try:
        yield patched
    finally:
        for name in patched:
            sys.modules[name].embed_columns = original
