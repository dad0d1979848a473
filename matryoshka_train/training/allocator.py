"""The CUDA memory allocator's setting for a run: expandable segments unless the user chose.

PyTorch's caching allocator keeps freed GPU blocks for reuse, but a block serves only requests that
fit it. With the packed forward every step's activations have a new size (the batch's real token
count), so the pool keeps asking the driver for new blocks (``cudaMalloc``, which waits for the GPU)
well into a run. Expandable segments let one segment grow and shrink instead.

Measured on one H200 (2026-11-28, ``scripts/bench/train.py`` 16-256 tokens, batch 128, the packed
default, one process with and one without; docs/benchmarks.md): cudaMalloc calls in the timed steps
28-30 -> 6, the first run in the process 1.10x faster (856 vs 779 samples/s), the warm run 1.04x
(937 vs 904), the same peak memory. One run each: the figure is thin, the direction is the one
PyTorch documents for allocations of varying size.

The allocator reads its setting when CUDA first allocates, so :func:`default_to_expandable` runs in
``mtrain run`` and ``mtrain sweep`` (and ``mtrain check``, to print what a run gets) before the
training stack is imported, and child processes
(``--nproc``, ``accelerate launch``, sweep trials) inherit it. A user who sets
``PYTORCH_CUDA_ALLOC_CONF`` (or ``PYTORCH_ALLOC_CONF``) keeps their value; ``expandable_segments:False``
turns it off. No torch import here: this module runs before torch is loaded.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # torch reads both; the first is the one 2.9 honours
EXPANDABLE = "expandable_segments:True"
SET_BY_US = "MTRAIN_SET_ALLOC_CONF"  # marks a value mtrain set, so `mtrain check` and results.json can say so
WHY = "fewer cudaMalloc waits while packed batches change size (1.04-1.10x on an H200, docs/benchmarks.md)"


def default_to_expandable(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` where no allocator setting is set.
    Returns True if it set it now."""
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in VARIABLES):
        return False
    environ[VARIABLES[0]] = EXPANDABLE
    environ[SET_BY_US] = "1"
    return True


def describe(environ: MutableMapping[str, str] | None = None) -> tuple[str, str]:
    """(the allocator setting, why) for ``mtrain check`` and results.json: what this process runs with
    (``mtrain run`` and ``mtrain check`` call :func:`default_to_expandable` first; a run started from
    Python does not, and gets "default" unless its environment says otherwise)."""
    environ = os.environ if environ is None else environ
    chosen = next(((name, environ[name]) for name in VARIABLES if environ.get(name)), None)
    if chosen is None:
        return "default", (f"{VARIABLES[0]} unset: the allocator's own defaults (a run started from Python; "
                           f"`mtrain run` sets {EXPANDABLE} before torch loads: {WHY})")
    name, value = chosen
    if environ.get(SET_BY_US) == "1" and value == EXPANDABLE:
        return value, f"auto: set by mtrain ({name}); {WHY}"
    return value, f"{name} set in the environment"
