"""``torch.compile`` on the encoder's layers (``training.compile_layers``).

A BERT-base step at batch 128 on an H100 is a few large matrix products and many small element-wise
kernels (layer norms, GELU, dropout, residual adds, softmax) that each read and write the whole
activation; compiling a layer fuses those into a few kernels. Only the repeated transformer layers
are compiled, each in place (``nn.Module.compile``), with dynamic shapes:

* the host-side work around them — the sorted forward's chunking, the packed forward's layout, the
  loss — stays plain Python, so nothing there becomes a graph break or a guard;
* batches of new widths (or, packed, new token counts) reuse the compiled code instead of
  compiling again for every shape;
* the weights, their names and the saved model are unchanged: compiling wraps the call, not the
  module, and :func:`uninstall` unwraps it.

Off (``auto``) on every device (training/speed.py has the figures): compiling costs seconds per run, paid
back only over enough steps, and the GPU suite (``scripts/bench/gpu_suite.sh``) measures it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

_LAYER_LISTS = ("layer", "layers", "h", "block", "blocks")  # what encoders call their list of layers


def encoder_layers(model: Any) -> list[nn.Module]:
    """The repeated transformer layers of a sentence-transformers model's encoder (the first
    ``nn.ModuleList`` named like a layer list, e.g. BERT's ``encoder.layer``); [] if none."""
    first = model[0] if len(model) else None
    hf = getattr(first, "auto_model", None) or getattr(first, "model", None)
    if not isinstance(hf, nn.Module):
        return []
    for name, module in hf.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in _LAYER_LISTS and len(module):
            return list(module)
    return []


def install(model: Any) -> list[nn.Module]:
    """Compile each encoder layer in place (dynamic shapes); returns the layers compiled ([]: none
    found, nothing changed)."""
    layers = encoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return layers


def uninstall(layers: list[nn.Module]) -> None:
    for layer in layers:
        layer._compiled_call_impl = None  # what nn.Module.compile set: calls go to forward again
