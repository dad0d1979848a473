"""No reads of device values on the host in the training hot loop.

On a GPU every ``tensor.item()``, ``.tolist()`` or ``bool(tensor)`` makes the host wait until the
device has finished everything queued so far; the GPU then idles while the host prepares and
launches the next work. A training step with one such read per forward cannot keep the GPU busy.
What the step needs to know on the host is usually known there already: the collator built the
attention masks on the CPU, so each row's length is free to read *before* the batch moves.

* :class:`HostLengthsCollator` reads each column's row lengths from the CPU masks and adds them to
  the batch under :data:`HOST_LENGTHS` (a NumPy array passes through pinning and the move to the
  device untouched).
* :func:`carry_host_lengths` takes them out again once the batch is on the device and attaches each
  to its device mask (attribute :data:`HOST_LENGTHS_ATTR`), where :func:`lengths_of` finds them;
  when sentence-transformers merges the candidate columns into one batch, the lengths are merged
  alongside.
* transformers' SDPA mask builder reads ``padding_mask.all()`` in every encoder forward to see
  whether the mask can be dropped. On a device we answer "keep the mask" without reading: always
  correct (an all-ones mask changes nothing), and a batch of texts with mixed lengths pads anyway.

:func:`no_host_reads` installs all of this around ``trainer.train()``; the NaN guard's deferred mode
(:mod:`matryoshka_train.training.faults`) and ``logging_nan_inf_filter=False`` remove the rest.
``tests/test_speed.py`` counts the reads of every step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sentence_transformers.base.losses import merged_forward
from torch import Tensor
from transformers import masking_utils

HOST_LENGTHS = "__host_lengths__"  # batch key: {attention-mask key: row lengths}, added by HostLengthsCollator
HOST_LENGTHS_ATTR = "_mt_host_lengths"  # where a device attention mask carries its rows' lengths


def host_lengths(mask: Tensor) -> np.ndarray | None:
    """The row lengths carried on a (right-padded) 2-D attention mask, or None if it carries none.

    A slice of rows (and of leading columns) of a mask that carries them carries them too: the
    gradient-cache losses (Cached*) embed ``mask[begin:end, :width]`` mini-batches, views whose base
    is the batch's mask, and their rows' lengths are the base's, cut at the slice's width."""
    known = getattr(mask, HOST_LENGTHS_ATTR, None)
    if known is not None:
        return known if len(known) == mask.shape[0] else None
    base = mask._base
    known = getattr(base, HOST_LENGTHS_ATTR, None) if base is not None else None
    if known is None or base.ndim != 2 or mask.ndim != 2 or mask.stride() != base.stride() or len(known) != len(base):
        return None
    row, column = divmod(mask.storage_offset() - base.storage_offset(), base.stride(0))
    if column or row < 0 or row + mask.shape[0] > len(known):
        return None
    return np.minimum(known[row:row + mask.shape[0]], mask.shape[1])


def lengths_of(mask: Tensor) -> tuple[np.ndarray, bool]:
    """The real length of each row of a 2-D attention mask, as a host array, and whether it came
    from the host (the forwards count the masks whose lengths did not).

    A mask carrying the lengths the collator read before the batch moved (:func:`host_lengths`) is
    answered from them; any other mask is summed, on the CPU there, on an accelerator by reading it
    back (which waits for the device)."""
    known = host_lengths(mask)
    if known is not None:
        return known, True
    return mask.sum(dim=1).cpu().numpy(), False


class HostLengthsCollator:
    """Wraps the trainer's collator and adds each attention mask's row lengths (see module doc)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # everything else (valid_label_columns …) from the wrapped collator
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        lengths = {
            key: value.sum(dim=1).numpy()
            for key, value in batch.items()
            if key.endswith("attention_mask")
            and isinstance(value, Tensor)
            and value.ndim == 2
            and value.device.type == "cpu"
        }
        if lengths:
            batch[HOST_LENGTHS] = lengths
        return batch


def carry_host_lengths(inputs: Any) -> Any:
    """Take :data:`HOST_LENGTHS` out of a batch already on the device and attach each column's
    lengths to its attention mask (the tensor the loss hands to the model)."""
    lengths = inputs.pop(HOST_LENGTHS, None) if isinstance(inputs, dict) else None
    for key, value in (lengths or {}).items():
        mask = inputs.get(key)
        if isinstance(mask, Tensor):
            setattr(mask, HOST_LENGTHS_ATTR, value)
    return inputs


def _merging_keeps_lengths(merge: Callable[..., Any]) -> Callable[..., Any]:
    """sentence-transformers merges candidate columns into one batch (a new mask): concatenate the
    host lengths alongside."""

    def merged(features_list: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        out = merge(features_list, *args, **kwargs)
        if isinstance(out, dict) and isinstance(out.get("attention_mask"), Tensor):
            parts = [getattr(f.get("attention_mask"), HOST_LENGTHS_ATTR, None) for f in features_list]
            if all(p is not None for p in parts):
                setattr(out["attention_mask"], HOST_LENGTHS_ATTR, np.concatenate(parts))
        return out

    return merged


def _mask_kept_without_reading(ignore: Callable[..., bool]) -> Callable[..., bool]:
    """transformers' "can the SDPA mask be dropped?" test, minus its device read (see module doc)."""

    def keep(padding_mask: Tensor | None, *args: Any, **kwargs: Any) -> bool:
        if padding_mask is not None and padding_mask.device.type != "cpu":
            return False  # keep the mask: correct for any batch, and no wait for the device
        return ignore(padding_mask, *args, **kwargs)  # on the CPU reading costs nothing

    return keep


@contextlib.contextmanager
def no_host_reads(trainer: Any) -> Iterator[None]:
    """Around ``trainer.train()``: lengths read in the collator, carried onto the device masks,
    kept through column merging; SDPA masks built without a device read."""
    patches = [(merged_forward, "merge_feature_batches", _merging_keeps_lengths)]
    if hasattr(masking_utils, "_ignore_bidirectional_mask_sdpa"):
        patches.append((masking_utils, "_ignore_bidirectional_mask_sdpa", _mask_kept_without_reading))
    originals = [(module, name, getattr(module, name)) for module, name, _ in patches]
    original_prepare = trainer._prepare_inputs
    trainer.data_collator = HostLengthsCollator(trainer.data_collator)
    trainer._prepare_inputs = lambda inputs: carry_host_lengths(original_prepare(inputs))
    for module, name, wrap in patches:
        setattr(module, name, wrap(getattr(module, name)))
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)
        trainer._prepare_inputs = original_prepare
        trainer.data_collator = trainer.data_collator.inner
