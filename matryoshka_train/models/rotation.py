"""A learned orthogonal rotation over the encoder's output, and the gradient split that makes it
keep the full-size embedding intact.

Why: truncating an embedding keeps its first coordinates, but a pretrained encoder spreads what it
knows over all of them. Training the whole encoder so that its first 8 or 64 coordinates carry the
meaning (plain Matryoshka training) bends the full-size geometry too, and on realistic data that
costs full-size quality (docs/quality.md). An orthogonal matrix ``W`` changes no cosine, dot
product or distance between two full-size embeddings, yet decides which directions come first.
So the model gets one square, bias-free :class:`~sentence_transformers.base.modules.dense.Dense`
after pooling, kept orthogonal throughout, and with ``decouple`` on:

* the full-size loss term trains the encoder only (it cannot see ``W``: the Dense's output is
  recomputed as ``e @ W.detach().T``);
* every term below full size trains ``W`` only (:func:`regrad` turns ``y`` into
  ``(y.detach() @ W.detach()) @ W.T``, the same value, with a gradient into ``W`` alone).

The full-size geometry is then shaped by the full-size objective alone (the same as training
without Matryoshka), and the small dims come from choosing the best-ordered rotation of it.

The module stays a standard ``Dense`` (identity activation, no bias): the saved model loads with
plain sentence-transformers, and :func:`orthogonalize` (run after every optimizer step) keeps its
weight orthogonal with matrix products only, so no step waits on the device.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import torch
from sentence_transformers.base.modules.dense import Dense
from sentence_transformers.base.modules.normalize import Normalize
from torch import Tensor, nn

UNROTATED = "unrotated_embedding"


def orthogonality_error(dense: Dense) -> float:
    """max |W Wᵀ − I|: how far the weight is from orthogonal (a device read; not for the hot loop)."""
    w = dense.linear.weight.detach().float()
    return (w @ w.T - torch.eye(w.shape[0], device=w.device)).abs().max().item()


def is_rotation(module: Any) -> bool:
    """A square, bias-free Dense with identity activation and an orthogonal weight."""
    if not isinstance(module, Dense) or module.bias or module.in_features != module.out_features:
        return False
    if not isinstance(module.activation_function, nn.Identity) or getattr(module, "use_residual", False):
        return False
    return orthogonality_error(module) <= 1e-3


def find_rotation(model: Any) -> tuple[str, Dense] | None:
    """The model's rotation module and its name in the model (its index), if it has one."""
    for name, module in model.named_children():
        if is_rotation(module):
            return name, module
    return None


def pca_rotation(embeddings: Tensor) -> Tensor:
    """The orthogonal matrix whose rows are the principal directions of ``embeddings`` (n × d),
    largest variance first: applied as ``e @ W.T``, the first k coordinates are the best k-dim
    linear summary of the data."""
    x = embeddings.double()
    x = x - x.mean(dim=0, keepdim=True)
    cov = x.T @ x / max(1, x.shape[0] - 1)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(values, descending=True)
    return vectors[:, order].T.contiguous().float()


def part_way(weight: Tensor, fraction: float) -> Tensor:
    """The rotation ``fraction`` of the way from no rotation to ``weight`` along the shortest path
    between them, ``exp(fraction · log W)``: 0 gives the identity, 1 ``weight`` itself, and every
    point between is orthogonal, so it too changes no full-size cosine. A ``weight`` that is a
    reflection (determinant −1) has no real logarithm; its last row is negated first, which flips
    the sign of the last coordinate only and so changes no cosine at any truncation below full size."""
    width = weight.shape[0]
    if fraction >= 1.0:
        return weight
    if fraction <= 0.0:
        return torch.eye(width, dtype=weight.dtype)
    # why: torch has no matrix logarithm, and only a part-way start needs one: scipy loads here, not at import
    import scipy.linalg

    w = weight.detach().cpu().double().clone()
    if torch.linalg.det(w) < 0:
        w[-1] = -w[-1]
    log = torch.from_numpy(scipy.linalg.logm(w.numpy()).real)
    log = 0.5 * (log - log.T)  # skew-symmetric to rounding error: its exponential is orthogonal
    return torch.linalg.matrix_exp(fraction * log).to(weight.dtype)


def add_rotation(model: Any, weight: Tensor) -> str:
    """Insert a rotation ``Dense`` after pooling (before a Normalize module, if any); returns its
    name in the model."""
    width = weight.shape[0]
    dense = Dense(width, width, bias=False, activation_function=nn.Identity(), init_weight=weight.clone())
    modules = list(model.named_children())
    at = next((i for i, (_, m) in enumerate(modules) if isinstance(m, Normalize)), len(modules))
    rebuilt = [m for _, m in modules[:at]] + [dense] + [m for _, m in modules[at:]]
    for name, _ in modules:
        delattr(model, name)
    for i, module in enumerate(rebuilt):
        model.add_module(str(i), module)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dense.to(device)
    return str(at)


@torch.no_grad()
def orthogonalize(dense: Dense, iterations: int = 2) -> None:
    """Pull the weight back onto the orthogonal matrices after an optimizer step (Newton–Schulz:
    ``W ← W (3I − WᵀW) / 2``, which converges quadratically from a nearly orthogonal start)."""
    w = dense.linear.weight
    x = w.float()
    eye = torch.eye(x.shape[0], device=x.device, dtype=x.dtype)
    for _ in range(iterations):
        x = x @ (1.5 * eye - 0.5 * (x.T @ x))
    w.copy_(x.to(w.dtype))


def regrad(y: Tensor, dense: Dense) -> Tensor:
    """The same value as ``y`` (a rotated embedding), with a gradient into the rotation only."""
    w = dense.linear.weight
    unrotated = y.detach() @ w.detach().to(y.dtype)
    return unrotated @ w.to(y.dtype).T


class Decoupling:
    """Hooks on the rotation module that keep the encoder's gradient out of ``W`` (see module doc).

    While installed and gradients are on, the Dense's output is ``e @ W.detach().T``: the encoder
    is trained by whatever uses the full embedding, and ``W`` receives gradient only through
    :func:`regrad`. Inference and evaluation (no gradients) are untouched.
    """

    def __init__(self, dense: Dense):
        self.dense = dense
        self._handles = [
            dense.register_forward_pre_hook(self._keep_input),
            dense.register_forward_hook(self._detach_weight),
        ]

    def _keep_input(self, module: nn.Module, args: tuple) -> None:
        features = args[0]
        if torch.is_grad_enabled() and isinstance(features, MutableMapping):  # a dict or a BatchEncoding
            features[UNROTATED] = features[module.module_input_name]

    def _detach_weight(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not (torch.is_grad_enabled() and isinstance(output, MutableMapping) and UNROTATED in output):
            return output
        e = output.pop(UNROTATED)
        output[module.module_output_name] = e @ module.linear.weight.detach().to(e.dtype).T
        return output

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def rotation_summary(dense: Dense | None, rcfg: Any, why: str = "") -> dict[str, Any]:
    """What results.json says of the rotation: whether the run had one and why, its settings and
    how orthogonal it ended."""
    if dense is None:
        return {"enabled": False, "why": why}
    return {"enabled": True, "why": why, "width": dense.in_features, "init": rcfg.init,
            "pca_fraction": rcfg.pca_fraction if rcfg.init == "pca" else None,
            "pca_texts_from": (None if rcfg.init != "pca" else "training texts" if rcfg.pca_source is None
                               else rcfg.pca_source.describe()),
            "pca_training_share": rcfg.pca_training_share if rcfg.pca_source is not None else None,
            "decouple": rcfg.decouple,
            "learning_rate": rcfg.learning_rate, "orthogonality_error": orthogonality_error(dense)}


@contextmanager
def bypassed(dense: Dense | None) -> Iterator[None]:
    """Within the block the rotation is the identity (the model as it was before one was added):
    the baseline evaluation scores the base model, not its rotated start."""
    if dense is None:
        yield
        return
    w = dense.linear.weight
    kept = w.detach().clone()
    with torch.no_grad():
        w.copy_(torch.eye(w.shape[0], dtype=w.dtype, device=w.device))
    try:
        yield
    finally:
        with torch.no_grad():
            w.copy_(kept)
