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
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .host_reads import lengths_of

IMPLEMENTATION = "mtrain_packed"


class _Layout:
    """Where a packed batch's tokens sit in its padded layout (built on the host, from host lengths)."""

    def __init__(self, lengths: np.ndarray, width: int, device: torch.device):
        self.rows, self.width, self.tokens = len(lengths), width, int(lengths.sum())
        key_mask = np.arange(width)[None, :] < lengths[:, None]  # [rows, width], right-padded
        row, column = np.nonzero(key_mask)  # the real tokens, row by row: their flat index and position
        self.index = torch.from_numpy(row * width + column).to(device, non_blocking=True)
        self.positions = torch.from_numpy(column).to(device, non_blocking=True)[None]
        self.key_mask = torch.from_numpy(key_mask).to(device, non_blocking=True)[:, None, None, :]
        # the rows' boundaries in the packed sequence, for the varlen kernel
        bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        self.cu_seqlens = torch.from_numpy(bounds).to(device, non_blocking=True)

    def attention_kwargs(self, varlen: bool) -> dict[str, Any]:
        """What :func:`packed_attention` needs, passed down the model's forward as keyword arguments
        (transformers hands them to the attention function): tensors and one constant, so a compiled
        layer (``training.compile_layers``) sees inputs, not host state it would have to guard on."""
        return {"mtrain_index": self.index, "mtrain_key_mask": self.key_mask, "mtrain_cu_seqlens": self.cu_seqlens,
                "mtrain_varlen": varlen}

    def pad(self, packed: Tensor) -> Tensor:
        return _pad(packed, self.index, self.rows * self.width)

    def pack(self, padded: Tensor) -> Tensor:
        return padded.index_select(0, self.index)


def _pad(packed: Tensor, index: Tensor, size: Any) -> Tensor:
    """``[N, ...]`` real tokens -> ``[size, ...]`` (rows x width) with zeros on pads."""
    return packed.new_zeros((size, *packed.shape[1:])).index_copy(0, index, packed)


def varlen_unavailable(device: torch.device, dtype: torch.dtype, head_size: int) -> str | None:
    """None if flash attention's varlen kernel takes attention on ``device`` with queries of ``dtype``
    and ``head_size``; else why not, in a few words (then attention runs padded)."""
    if device.type != "cuda":
        return "not on a CUDA device"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"{dtype} (flash attention needs fp16 or bf16)"
    if head_size % 8 or head_size > 256:
        return f"head size {head_size} (flash attention needs a multiple of 8, at most 256)"
    if not torch.backends.cuda.flash_sdp_enabled():
        return "flash attention disabled (torch.backends.cuda.enable_flash_sdp(False))"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "a GPU older than sm80"
    return varlen_probe(device, dtype, head_size)


@functools.lru_cache(maxsize=16)
def varlen_probe(device: torch.device, dtype: torch.dtype, head_size: int) -> str | None:
    """Run the varlen kernel once, forward and backward with dropout, on two tiny rows: None if it
    works here, else why not (the installed torch lacks it, the build has no flash kernels …), so a
    run falls back to padded attention instead of failing in its first step. Once per device, dtype
    and head size; it waits for the device once, then never again."""
    try:  # gradients on and autocast off, whatever the calling forward runs under (an eval, a bf16 step)
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            q, k, v = (torch.randn(6, 2, head_size, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
            cu_seqlens = torch.tensor([0, 2, 6], device=device, dtype=torch.int32)
            flash_varlen(q, k, v, cu_seqlens, 4, 0.1, None).float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use it, and say why
        return f"the varlen kernel failed here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return None


def flash_varlen(query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, longest: Any,
                 dropout: float, scale: float | None) -> Tensor:
    """Flash attention over packed ``[N, heads, d]`` tokens, row boundaries in ``cu_seqlens``, no row
    longer than ``longest`` (an upper bound is enough: the kernel sizes its grid by it).

    The aten op rather than ``torch.nn.attention.varlen.varlen_attn``: the public wrapper has no
    dropout, and BERT-style models train with attention dropout. The op has an autograd formula
    (its backward is ``_flash_attention_backward``)."""
    return torch.ops.aten._flash_attention_forward(
        query, key, value, cu_seqlens, cu_seqlens, longest, longest, dropout, False, False, scale=scale
    )[0]


def packed_attention(
    module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
    dropout: float = 0.0, scaling: float | None = None, *, mtrain_index: Tensor, mtrain_key_mask: Tensor,
    mtrain_cu_seqlens: Tensor, mtrain_varlen: bool = False, **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention-interface signature on packed ``[1, heads, N, d]`` inputs; returns
    ``[1, N, heads, d]``. Varlen flash attention where it runs, else attention per row in the padded
    layout with the key-padding mask (module docstring). The layout comes in the keyword arguments
    (:meth:`_Layout.attention_kwargs`)."""
    heads, dim = query.shape[1], query.shape[3]
    rows, width = mtrain_key_mask.shape[0], mtrain_key_mask.shape[-1]
    if mtrain_varlen:  # decided per forward by PackedForward.varlen_unavailable
        def tokens(x: Tensor) -> Tensor:  # [1, h, N, d] -> [N, h, d]
            return x[0].transpose(0, 1)

        out = flash_varlen(tokens(query), tokens(key), tokens(value), mtrain_cu_seqlens, width, dropout, scaling)
        return out[None], None

    def padded(x: Tensor) -> Tensor:  # [1, h, N, d] -> [rows, h, width, d]
        flat = _pad(x[0].transpose(0, 1), mtrain_index, rows * width)  # [rows * width, h, d]
        return flat.view(rows, width, heads, dim).transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(
        padded(query), padded(key), padded(value), attn_mask=mtrain_key_mask, dropout_p=dropout, scale=scaling
    )
    out = out.transpose(1, 2).reshape(rows * width, heads, dim).index_select(0, mtrain_index)
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
        self.attention_why: str | None = None  # why not varlen, when padded

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
        lengths, carried = lengths_of(attention_mask)
        self.uncarried += not carried
        lengths = np.asarray(lengths, dtype=np.int64)
        layout = _Layout(lengths, width, attention_mask.device)
        self.padded_tokens += rows * width
        self.run_tokens += layout.tokens
        token_type_ids = kwargs.pop("token_type_ids", None)
        if token_type_ids is not None:
            token_type_ids = layout.pack(token_type_ids.reshape(-1))[None]
        why = self.varlen_unavailable(attention_mask.device)
        varlen = why is None
        with _active(self.model.config):
            output = self.forward(
                input_ids=layout.pack(input_ids.reshape(-1))[None],
                attention_mask=None,
                token_type_ids=token_type_ids,
                position_ids=layout.positions + _position_offset(self.model),
                **layout.attention_kwargs(varlen),
                **kwargs,
            )
        self.attention, self.attention_why = ("varlen" if varlen else "padded"), why
        hidden = output.last_hidden_state[0]
        output.last_hidden_state = layout.pad(hidden).view(rows, width, hidden.shape[-1])
        if getattr(output, "pooler_output", None) is not None:
            output.pooler_output = None  # computed on the packed row: meaningless; sentence-transformers pools itself
        return output

    def varlen_unavailable(self, device: torch.device) -> str | None:
        """Why this forward's attention cannot run varlen on ``device`` now (None: it can), from the
        dtype the attention will see: autocast's where autocast is on, else the weights'."""
        config = self.model.config
        autocast = device.type in ("cuda", "cpu") and torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else self.model.dtype
        return varlen_unavailable(device, dtype, config.hidden_size // config.num_attention_heads)

    @property
    def real_tokens(self) -> int:
        return self.run_tokens  # only real tokens run


def _position_offset(model: Any) -> int:
    """RoBERTa-style models count positions from padding_idx + 1; BERT from 0."""
    embeddings = getattr(model, "embeddings", None)
    return int(getattr(embeddings, "padding_idx", -1) + 1) if hasattr(embeddings, "padding_idx") else 0


@contextlib.contextmanager
def _active(config: Any) -> Iterator[None]:
    before = config._attn_implementation
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = before


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


def varlen_unavailable_for(model: Any, precision: str) -> str | None:
    """Why a run of ``model`` (a sentence-transformers model, on its training device) at ``precision``
    (bf16, fp16, fp32) could not run attention on the varlen kernel; None if it can (probed once)."""
    hf, _ = _encoder(model)
    config = hf.config
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, next(hf.parameters()).dtype)
    device = next(hf.parameters()).device
    return varlen_unavailable(device, dtype, config.hidden_size // config.num_attention_heads)


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
