"""Building the configured loss: the sentence-transformers class the registry names, its kwargs
checked against the constructor, wrapped in the Matryoshka modifier (``sum``/``mean`` as weights).
The registry itself (names, aliases, columns) is :mod:`matryoshka_train.config.registry`.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from sentence_transformers.sentence_transformer import losses as st_losses

from ..config.messages import did_you_mean
from ..config.registry import LOSSES
from ..config.schema import LossConfig, MatryoshkaConfig
from .per_dim import PerDimMatryoshkaLoss

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


# Constructor arguments the framework fills in itself; a config must not set them in kwargs.
_FILLED_BY_US = {"model", "guide", "gather_across_devices"}


def loss_class(name: str) -> type:
    return getattr(st_losses, LOSSES[name].class_name)


def kwargs_problems(cfg: LossConfig) -> list[str]:
    """Unknown or reserved kwargs for the configured loss, as messages (empty when all is well)."""
    params = inspect.signature(loss_class(cfg.name).__init__).parameters
    allowed = [p for p in params if p not in ("self", *_FILLED_BY_US)]
    problems = []
    for key in cfg.kwargs:
        if key == "gather_across_devices":
            problems.append("set loss.gather_across_devices (a key of its own), not loss.kwargs.gather_across_devices")
        elif key in _FILLED_BY_US:
            problems.append(f"'{key}' is set by the framework; use loss.guide_model for GIST's guide")
        elif key not in params:
            hint = did_you_mean(key, allowed) or f"; {cfg.name} takes: {', '.join(allowed)}"
            problems.append(f"unknown argument '{key}' for {cfg.name}{hint}")
    if cfg.name in ("GISTEmbedLoss", "CachedGISTEmbedLoss") and not cfg.guide_model:
        problems.append(f"{cfg.name} needs a guide model: set guide_model to a hub id or local path")
    return problems


def matryoshka_weights(mcfg: MatryoshkaConfig, dims: list[int]) -> list[float]:
    """Per-dim weights after the reduction: 'mean' divides every weight by the number of dims,
    so the summed loss (and the effective step size) stays that of one dim. ``weights: auto`` is
    resolved by the training plan (``prepare.dim_weights_decision``) before the loss is built; left
    unresolved it is all 1."""
    weights = list(mcfg.weights) if isinstance(mcfg.weights, list) else [1.0] * len(dims)
    if mcfg.reduction == "mean":
        weights = [w / len(dims) for w in weights]
    return weights


def build_loss(
    model: Any, cfg: LossConfig, mcfg: MatryoshkaConfig, dims: list[int], guide: Any = None, rotation: Any = None
) -> nn.Module:
    """Construct the inner loss and wrap it as the config says.

    ``dims`` are the validated Matryoshka dims (see :func:`matryoshka_train.models.resolve_dims`);
    ``rotation`` is the model's decoupled rotation module, if any (the terms below full size then
    train only it, see :mod:`matryoshka_train.models.rotation`).
    """

    kwargs = dict(cfg.kwargs)
    if cfg.name in ("GISTEmbedLoss", "CachedGISTEmbedLoss"):
        kwargs["guide"] = guide
    if cfg.gather_across_devices:
        kwargs["gather_across_devices"] = True
    inner = loss_class(cfg.name)(model, **kwargs)
    if not cfg.matryoshka:
        return inner
    weights = matryoshka_weights(mcfg, dims)
    if mcfg.wrapper == "matryoshka":
        return PerDimMatryoshkaLoss(
            model, inner, matryoshka_dims=dims, matryoshka_weights=weights,
            n_dims_per_step=mcfg.n_dims_per_step, rotation=rotation,
            similarity_weight=mcfg.similarity_weight, **mcfg.wrapper_kwargs,
        )
    if mcfg.wrapper == "matryoshka_2d":
        extra = {"n_dims_per_step": mcfg.n_dims_per_step, **mcfg.wrapper_kwargs}
        return st_losses.Matryoshka2dLoss(model, inner, matryoshka_dims=dims, matryoshka_weights=weights, **extra)
    return st_losses.AdaptiveLayerLoss(model, inner, **mcfg.wrapper_kwargs)
