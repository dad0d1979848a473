"""Less padding, same loss: the encoder's position-wise work on real tokens only.

In a BERT-style encoder every operation but attention works on each token alone: the embeddings,
the Q/K/V and output projections, the feed-forward block, layer norms, dropout. A batch padded to
its longest row spends that work on pad tokens too (46% of the tokens on 16-256-token texts in
docs/benchmarks.md). This forward packs the batch's real tokens into one row — ``[1, N]`` with
``N`` the real tokens — and runs the encoder on it, so every one of those operations sees real
tokens only. Attention, the one operation that mixes tokens, runs in one of two ways:

* **varlen** (CUDA, fp16/bf16, a head size flash attention takes): flash attention over the packed
  tokens with each row's boundaries (``cu_seqlens``), attention dropout included, so no operation
  of the forward sees a pad token;
* **padded** (anywhere else, e.g. on a CPU): the packed queries, keys and values are scattered back
  to the padded ``[rows, width]`` layout, the model's usual scaled-dot-product attention runs with
  the padding mask, and the real tokens are gathered again.

The token embeddings go back to the padded layout (zeros on pads) for pooling, so the rest of the
model and every loss see what they always saw.

Equal outputs (up to float rounding) for models that
* route attention through transformers' attention interface (``config._attn_implementation``):
  BERT, RoBERTa and XLM-R (the ones tested; others may work and are left alone);
* are bidirectional encoders without position-dependent attention bias (absolute position ids are
  passed per row, so a row's positions are what they were);
* pad on the right.
For anything else :func:`install` returns None and nothing changes. ``tests/test_packed_forward.py``
compares outputs, losses and gradients with the plain forward.

Row lengths come from the collator's host copy when the batch carries one (``host_reads``), so
building the index costs no device read; otherwise the mask is read once per forward.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .host_reads import HOST_LENGTHS_ATTR, row_lengths

IMPLEMENTATION = "mtrain_packed"
_layout = threading.local()  # the batch being run packed: set for the duration of one forward


class _Layout:
    """Where a packed batch's tokens sit in its padded layout."""

    def __init__(self, lengths: np.ndarray, width: int, device: torch.device):
        self.rows, self.width, self.tokens = len(lengths), width, int(lengths.sum())
        key_mask = np.arange(width)[None, :] < lengths[:, None]  # [rows, width], right-padded
        row, column = np.nonzero(key_mask)  # the real tokens, row by row: their flat index and position
        self.index = torch.from_numpy(row * width + column).to(device, non_blocking=True)
        self.positions = torch.from_numpy(column).to(device, non_blocking=True)[None]
        self.key_mask = torch.from_numpy(key_mask).to(device, non_blocking=True)[:, None, None, :]
        # the rows' boundaries in the packed sequence, for the varlen kernel (lengths are host values)
        bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        self.cu_seqlens = torch.from_numpy(bounds).to(device, non_blocking=True)
        self.longest = int(lengths.max()) if len(lengths) else 0
        self.varlen: bool | None = None  # whether attention ran varlen; set by its first call

    def pad(self, packed: Tensor) -> Tensor:
        """``[N, ...]`` real tokens -> ``[rows * width, ...]`` with zeros on pads."""
        out = packed.new_zeros((self.rows * self.width, *packed.shape[1:]))
        return out.index_copy(0, self.index, packed)

    def pack(self, padded: Tensor) -> Tensor:
        return padded.index_select(0, self.index)


def varlen_unavailable(query: Tensor) -> str | None:
    """None if flash attention's varlen kernel takes these packed ``[1, heads, N, d]`` queries; else
    why not, in a few words (then attention runs padded)."""
    if not query.is_cuda:
        return "not on a CUDA device"
    if query.dtype not in (torch.float16, torch.bfloat16):
        return f"{query.dtype} (flash attention needs fp16 or bf16)"
    if query.shape[-1] % 8 or query.shape[-1] > 256:
        return f"head size {query.shape[-1]} (flash attention needs a multiple of 8, at most 256)"
    if not torch.backends.cuda.flash_sdp_enabled():
        return "flash attention disabled (torch.backends.cuda.enable_flash_sdp(False))"
    if torch.cuda.get_device_capability(query.device) < (8, 0):
        return "a GPU older than sm80"
    return None


def flash_varlen(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, longest: int,
                 dropout: float, scale: float | None) -> Tensor:
    """Flash attention over packed ``[N, heads, d]`` tokens, row boundaries in ``cu_seqlens``.

    The aten op rather than ``torch.nn.attention.varlen.varlen_attn``: the public wrapper has no
    dropout, and BERT-style models train with attention dropout. The op has an autograd formula
    (its backward is ``_flash_attention_backward``)."""
    return torch.ops.aten._flash_attention_forward(
        query, key, value, cu_seqlens, cu_seqlens, longest, longest, dropout, False, False, scale=scale
    )[0]


def packed_attention(
    module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
    dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention-interface signature on packed ``[1, heads, N, d]`` inputs; returns
    ``[1, N, heads, d]``. Varlen flash attention where it runs, else attention per row in the padded
    layout with the key-padding mask (module docstring)."""
    layout: _Layout = _layout.current
    heads, dim = query.shape[1], query.shape[3]
    if layout.varlen is None:  # decided on the forward's first attention call, kept for its other layers
        layout.varlen = varlen_unavailable(query) is None
    if layout.varlen:
        def tokens(x: Tensor) -> Tensor:  # [1, h, N, d] -> [N, h, d]
            return x[0].transpose(0, 1)

        out = flash_varlen(tokens(query), tokens(key), tokens(value), layout.cu_seqlens, layout.longest,
                           dropout, scaling)
        return out[None], None

    def padded(x: Tensor) -> Tensor:  # [1, h, N, d] -> [rows, h, width, d]
        flat = layout.pad(x[0].transpose(0, 1))  # [rows * width, h, d]
        return flat.view(layout.rows, layout.width, heads, dim).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(
        padded(query), padded(key), padded(value), attn_mask=layout.key_mask, dropout_p=dropout, scale=scaling
    )
    out = layout.pack(out.transpose(1, 2).reshape(layout.rows * layout.width, heads, dim))
    return out[None], None


def _register() -> None:
    # transformers: its attention and mask registries, needed only once a packed forward is installed
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface  # transformers, as above

    AttentionInterface.register(IMPLEMENTATION, packed_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, lambda *args, **kwargs: None)  # the layout holds the mask


class PackedForward:
    """The Hugging Face model's ``forward`` over the batch's real tokens (module docstring)."""

    def __init__(self, model: Any, forward: Any):
        self.model, self.forward = model, forward
        self.padded_tokens = 0  # what the plain forward would have run (rows x width), summed
        self.run_tokens = 0  # what ran through the position-wise layers instead
        self.uncarried = 0  # forwards whose mask came without host lengths: on a GPU each is a device read
        self.attention: str | None = None  # "varlen" or "padded": how the last forward ran attention

    def __call__(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, **kwargs: Any) -> Any:
        plain = (
            input_ids is None
            or not isinstance(attention_mask, Tensor)
            or attention_mask.ndim != 2
            or kwargs.get("inputs_embeds") is not None
            or kwargs.get("output_hidden_states")
            or kwargs.get("output_attentions")
            or kwargs.get("position_ids") is not None
        )
        if plain:
            return self.forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        rows, width = attention_mask.shape
        lengths = np.asarray(row_lengths(attention_mask), dtype=np.int64)
        layout = _Layout(lengths, width, attention_mask.device)
        self.padded_tokens += rows * width
        self.run_tokens += layout.tokens
        self.uncarried += getattr(attention_mask, HOST_LENGTHS_ATTR, None) is None
        token_type_ids = kwargs.pop("token_type_ids", None)
        if token_type_ids is not None:
            token_type_ids = layout.pack(token_type_ids.reshape(-1))[None]
        with _active(layout, self.model.config):
            output = self.forward(
                input_ids=layout.pack(input_ids.reshape(-1))[None],
                attention_mask=None,
                token_type_ids=token_type_ids,
                position_ids=layout.positions + _position_offset(self.model),
                **kwargs,
            )
        self.attention = "varlen" if layout.varlen else "padded"
        hidden = output.last_hidden_state[0]
        output.last_hidden_state = layout.pad(hidden).view(rows, width, hidden.shape[-1])
        if getattr(output, "pooler_output", None) is not None:
            output.pooler_output = None  # computed on the packed row: meaningless; sentence-transformers pools itself
        return output


    @property
    def real_tokens(self) -> int:
        return self.run_tokens  # only real tokens run


def _position_offset(model: Any) -> int:
    """RoBERTa-style models count positions from padding_idx + 1; BERT from 0."""
    embeddings = getattr(model, "embeddings", None)
    return int(getattr(embeddings, "padding_idx", -1) + 1) if hasattr(embeddings, "padding_idx") else 0


@contextlib.contextmanager
def _active(layout: _Layout, config: Any) -> Iterator[None]:
    before = config._attn_implementation
    _layout.current = layout
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = before
        _layout.current = None


def supported(hf_model: Any, tokenizer: Any) -> str | None:
    """None if the packed forward gives this model's outputs; else why not, in a few words."""
    config = getattr(hf_model, "config", None)
    if config is None or getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        return "not a bidirectional encoder"
    if getattr(tokenizer, "padding_side", "right") != "right":
        return "the tokenizer pads on the left"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position embeddings '{config.position_embedding_type}'"
    model_type = getattr(config, "model_type", "")
    if model_type not in ("bert", "roberta", "xlm-roberta"):  # the ones tests/test_packed_forward.py checks
        return f"model type '{model_type}' not verified"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", None):
        return f"attention implementation '{config._attn_implementation}'"
    return None


def _encoder(model: Any) -> tuple[Any, Any]:
    first = model[0] if len(model) else None
    return getattr(first, "auto_model", None) or getattr(first, "model", None), getattr(first, "tokenizer", None)


def why_not(model: Any) -> str | None:
    """None if a sentence-transformers model can run packed; else why not, in a few words."""
    hf, tokenizer = _encoder(model)
    return "no transformer encoder first" if hf is None else supported(hf, tokenizer)


def install(model: Any) -> PackedForward | None:
    """Give a sentence-transformers model's encoder the packed forward and return it; None (and no
    change) where :func:`why_not` gives a reason. :func:`uninstall` undoes it."""
    if why_not(model) is not None:
        return None
    hf, _ = _encoder(model)
    _register()
    patched = PackedForward(hf, hf.forward)
    hf.forward = patched
    return patched


def uninstall(model: Any, patched: PackedForward | None) -> None:
    if patched is not None and patched.model.__dict__.get("forward") is patched:
        del patched.model.forward
