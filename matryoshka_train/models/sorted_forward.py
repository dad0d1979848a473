"""Less padding, same loss: the forward pass over length-sorted chunks.

A tokenizer pads every text of a batch to the longest one, and sentence-transformers 6 goes
further for in-batch-negative losses: it merges the positive and negative columns into one forward
padded to their common width. With texts of mixed length (5 to 200 words is ordinary) much of the
compute of a step is spent on pad tokens that the attention mask then throws away.

:class:`SortedChunkForward` replaces ``model.forward`` on one model instance. When a batch is wide
enough to matter, it orders the rows by real length, cuts them into chunks of similar length, runs
each chunk trimmed to its own longest row, and puts the outputs back in the original row order. For
an encoder with an attention mask, a row's output does not depend on how much padding it was given
or on the other rows of its batch, so ``sentence_embedding`` (and therefore every loss built on it)
is the same up to float rounding; :func:`loss_equality` checks exactly that on a real batch.

Per-token outputs (``token_embeddings``, ``attention_mask`` …) are padded back to the batch width
so downstream modules and losses see the shapes they always saw. Inputs it does not understand
(no 2-D ``attention_mask``, e.g. static embeddings) pass through untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sentence_transformers.sentence_transformer.modules import Transformer
from torch import Tensor

from .host_reads import lengths_of

# keys whose second axis is the token axis, in the model's inputs and outputs
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "token_embeddings")
_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def plan_chunks(
    lengths: list[int], max_tokens: int, min_tokens: int = 1024, keep_ratio: float = 0.75
) -> list[tuple[int, int]]:
    """Split lengths sorted longest-first into ``(start, end)`` chunks.

    A chunk closes when its padded size (rows x its first, longest row) would pass ``max_tokens``,
    or, once it holds ``min_tokens`` padded tokens, when the next row is shorter than ``keep_ratio``
    of the chunk's width. So no chunk wastes more than about a quarter of its tokens on padding, and
    no chunk is so small that per-call overhead and small matrix products eat the saving (with
    short texts a batch stays one chunk, only trimmed)."""
    chunks, start = [], 0
    for i in range(1, len(lengths) + 1):
        if i == len(lengths):
            chunks.append((start, i))
            break
        width = max(lengths[start], 1)
        rows = i - start
        if (rows + 1) * width > max_tokens or (rows * width >= min_tokens and lengths[i] < keep_ratio * width):
            chunks.append((start, i))
            start = i
    return chunks


class SortedChunkForward:
    """``model.forward`` over length-sorted, individually trimmed chunks (see the module docstring)."""

    def __init__(self, forward: Callable[..., dict[str, Any]], max_tokens: int = 8192, min_saving: float = 0.1,
                 min_tokens: int = 1024, round_to: int | None = None):
        self.forward = forward
        # chunk widths rounded up to a multiple of this (capped at the batch width): on a GPU each new
        # width costs a one-off set-up (docs/benchmarks.md), so chunks share the collator's few widths
        self.round_to = round_to if round_to and round_to > 1 else None
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.min_saving = min_saving
        self.padded_tokens = 0  # what the plain forward would have run (rows x width), summed
        self.run_tokens = 0  # what was run instead
        self.real_tokens = 0
        self.uncarried = 0  # forwards whose mask came without host lengths: on a GPU each is a device read

    def __call__(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        mask = features.get("attention_mask") if isinstance(features, dict) else None
        if not isinstance(mask, Tensor) or mask.ndim != 2 or "cu_seq_lens_q" in features:
            return self.forward(features, **kwargs)
        rows, width = mask.shape
        lengths, carried = lengths_of(mask)  # on the host: read there before the batch moved, never waited for
        self.uncarried += not carried
        order_host = np.argsort(-lengths, kind="stable")
        sorted_lengths = lengths[order_host].tolist()
        chunks = plan_chunks(sorted_lengths, self.max_tokens, self.min_tokens)
        run = sum((end - start) * self._width(sorted_lengths[start], width) for start, end in chunks)
        self.padded_tokens += rows * width
        self.real_tokens += int(sum(sorted_lengths))
        if len(chunks) == 1 or run > (1 - self.min_saving) * rows * width:
            self.run_tokens += rows * width
            # one chunk: still trim the columns every row pads (cheap, and never changes the result)
            longest = self._width(sorted_lengths[0], width)
            if longest < width:
                output = _pad_outputs(self.forward(_take(features, None, longest, rows, width), **kwargs), width, rows)
                return _into(features, output)
            return self.forward(features, **kwargs)
        self.run_tokens += run
        order = torch.from_numpy(order_host).to(mask.device, non_blocking=True)
        outputs = []
        for start, end in chunks:
            index = order[start:end]
            length = self._width(sorted_lengths[start], width)
            outputs.append(self.forward(_take(features, index, length, rows, width), **kwargs))
        inverse_host = np.empty_like(order_host)
        inverse_host[order_host] = np.arange(rows)
        inverse = torch.from_numpy(inverse_host).to(mask.device, non_blocking=True)
        return _into(features, _merge(outputs, [end - start for start, end in chunks], inverse, width, rows))

    def _width(self, longest: int, width: int) -> int:
        """A chunk's width: its longest row, rounded up to ``round_to`` if set, never past the batch's."""
        longest = max(longest, 1)
        if self.round_to:
            longest = -(-longest // self.round_to) * self.round_to
        return min(longest, width)

    @property
    def padded_share_saved(self) -> float:
        return 1 - self.run_tokens / self.padded_tokens if self.padded_tokens else 0.0


def _into(features: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
    """Like the plain forward, hand back the caller's dict with the outputs added (some losses read
    what the model wrote into it); the caller's own inputs are kept as they were."""
    for key, value in output.items():
        if key not in _INPUT_KEYS or key not in features:
            features[key] = value
    return features


def _take(features: dict[str, Any], index: Tensor | None, length: int, rows: int, width: int) -> dict[str, Any]:
    out = {}
    for key, value in features.items():
        if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == rows and key != "prompt_length":
            if index is not None:
                value = value.index_select(0, index.to(value.device))
            if value.ndim >= 2 and value.shape[1] == width and key in TOKEN_KEYS:
                value = value[:, :length]
        out[key] = value
    return out


def _pad_tokens(value: Tensor, width: int) -> Tensor:
    missing = width - value.shape[1]
    if missing <= 0:
        return value
    pad = value.new_zeros((value.shape[0], missing, *value.shape[2:]))
    return torch.cat([value, pad], dim=1)


def _pad_outputs(output: dict[str, Any], width: int, rows: int) -> dict[str, Any]:
    for key, value in list(output.items()):
        if key in TOKEN_KEYS and isinstance(value, Tensor) and value.ndim >= 2 and value.shape[0] == rows:
            output[key] = _pad_tokens(value, width)
    return output


def _merge(outputs: list[dict[str, Any]], sizes: list[int], inverse: Tensor, width: int, rows: int) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    first = outputs[0]
    for key, value in first.items():
        if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == sizes[0] and key != "prompt_length":
            parts = [o[key] for o in outputs]
            if key in TOKEN_KEYS and value.ndim >= 2:
                parts = [_pad_tokens(p, width) for p in parts]
            merged[key] = torch.cat(parts, dim=0).index_select(0, inverse.to(value.device))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Tensor) for v in value):
            # per-layer token outputs (output_hidden_states): pad and merge each layer
            layers = []
            for layer in range(len(value)):
                parts = [_pad_tokens(o[key][layer], width) for o in outputs]
                layers.append(torch.cat(parts, dim=0).index_select(0, inverse.to(parts[0].device)))
            merged[key] = type(value)(layers) if isinstance(value, tuple) else layers
        else:
            merged[key] = value
    return merged


def install(
    model: Any, max_tokens: int, min_tokens: int = 1024, round_to: int | None = None
) -> SortedChunkForward | None:
    """Give ``model`` (this one instance) the sorted-chunk forward and return it (its counters say
    how much padding was saved); ``uninstall`` undoes it. Only models whose first module is a
    transformer encoder qualify; for anything else nothing changes and None is returned. ``round_to``
    rounds each chunk's width up to a multiple (the run's ``pad_to_multiple_of``)."""
    if first_transformer(model) is None:
        return None
    patched = SortedChunkForward(model.forward, max_tokens, min_tokens=min_tokens, round_to=round_to)
    model.forward = patched
    return patched


def uninstall(model: Any, patched: SortedChunkForward | None) -> None:
    """Undo :func:`install`. If something wrapped our forward since (Accelerate's mixed-precision
    autocast does), the wrapper stays; it calls the sorted forward, which still gives equal outputs."""
    if patched is not None and model.__dict__.get("forward") is patched:
        del model.forward


def first_transformer(model: Any) -> Any:
    """The model's first module if it is a sentence-transformers ``Transformer`` (a text encoder
    with an attention mask), else None."""

    children = list(model.children()) if hasattr(model, "children") else []
    return children[0] if children and isinstance(children[0], Transformer) else None


def loss_equality(
    model: Any,
    loss: Any,
    features: list[dict[str, Tensor]],
    labels: Tensor | None,
    max_tokens: int,
) -> dict[str, float]:
    """The same batch through the plain and the sorted-chunk forward: loss values and gradients.

    Dropout is switched off for the comparison (two forwards would otherwise draw different masks);
    everything else is the training computation. Returns the absolute and relative differences."""
    was_training = model.training
    model.eval()
    try:
        results = []
        for chunked in (False, True):
            patched = install(model, max_tokens) if chunked else None
            try:
                model.zero_grad(set_to_none=True)
                value = loss([dict(f) for f in features], labels)
                if isinstance(value, dict):
                    value = torch.stack(list(value.values())).sum()
                value.backward()
                grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
                results.append((float(value.detach()), grads))
            finally:
                uninstall(model, patched)
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    (plain, g_plain), (chunked, g_chunked) = results
    return {
        "loss_plain": plain,
        "loss_sorted_chunks": chunked,
        "loss_abs_diff": abs(plain - chunked),
        "grad_max_abs_diff": float((g_plain - g_chunked).abs().max()),
        "grad_rel_diff": float((g_plain - g_chunked).norm() / g_plain.norm().clamp_min(1e-12)),
    }
