"""One registry of losses: config name -> sentence-transformers class, what columns it reads,
and how it is wrapped in the Matryoshka modifier.

This module imports nothing heavy at the top so that the config schema can validate loss names
without loading torch; the classes are resolved when a loss is built.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .config import LossConfig, MatryoshkaConfig


@dataclass(frozen=True)
class LossSpec:
    """What a loss needs from its dataset.

    inputs: "in_batch" (anchor, positive, optional negatives; no label), "pair_score" (two texts and
    a float score), "embedding" (texts and a label embedding), "margin" (query, positive, negative
    and a float margin), "triplet" (exactly anchor, positive, negative).
    """

    class_name: str
    inputs: str
    aliases: tuple[str, ...] = ()
    gathers: bool = False  # takes gather_across_devices: in-batch negatives from every process


    @property
    def in_batch_negatives(self) -> bool:
        return self.inputs == "in_batch"

    def column_rule(self) -> str:
        return {
            "in_batch": "two or more text columns (anchor, positive, optional negatives) and no label column",
            "pair_score": "two text columns and a float 'label' (or 'score') column",
            "embedding": "one or more text columns and a 'label' column holding an embedding per row",
            "margin": "three text columns (query, positive, negative) and a float 'label' margin column",
            "triplet": "exactly three text columns (anchor, positive, negative) and no label column",
        }[self.inputs]


LOSSES: dict[str, LossSpec] = {
    "MultipleNegativesRankingLoss": LossSpec("MultipleNegativesRankingLoss", "in_batch", ("mnrl",), gathers=True),
    "CachedMultipleNegativesRankingLoss": LossSpec(
        "CachedMultipleNegativesRankingLoss", "in_batch", ("cached_mnrl", "cmnrl"), gathers=True
    ),
    "MultipleNegativesSymmetricRankingLoss": LossSpec(
        "MultipleNegativesSymmetricRankingLoss", "in_batch", ("symmetric_mnrl",), gathers=True
    ),
    "GISTEmbedLoss": LossSpec("GISTEmbedLoss", "in_batch", ("gist",), gathers=True),
    "CachedGISTEmbedLoss": LossSpec("CachedGISTEmbedLoss", "in_batch", ("cached_gist",), gathers=True),
    "CosineSimilarityLoss": LossSpec("CosineSimilarityLoss", "pair_score", ("cosine", "cosine_similarity")),
    "CoSENTLoss": LossSpec("CoSENTLoss", "pair_score", ("cosent",)),
    "AnglELoss": LossSpec("AnglELoss", "pair_score", ("angle",)),
    "MSELoss": LossSpec("MSELoss", "embedding", ("mse",)),
    "MarginMSELoss": LossSpec("MarginMSELoss", "margin", ("margin_mse",)),
    "TripletLoss": LossSpec("TripletLoss", "triplet", ("triplet",)),
}

_ALIASES = {alias: name for name, spec in LOSSES.items() for alias in (name.lower(), *spec.aliases)}

# Constructor arguments the framework fills in itself; a config must not set them in kwargs.
_FILLED_BY_US = {"model", "guide", "gather_across_devices"}


def canonical_loss_name(name: str) -> str | None:
    """'mnrl', 'MultipleNegativesRankingLoss' and 'multiplenegativesrankingloss' all name one loss."""
    if name in LOSSES:
        return name
    return _ALIASES.get(name.lower())


def loss_class(name: str) -> type:
    from sentence_transformers.sentence_transformer import losses as st_losses

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
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; {cfg.name} takes: {', '.join(allowed)}"
            problems.append(f"unknown argument '{key}' for {cfg.name}{hint}")
    if cfg.name in ("GISTEmbedLoss", "CachedGISTEmbedLoss") and not cfg.guide_model:
        problems.append(f"{cfg.name} needs a guide model: set guide_model to a hub id or local path")
    return problems


def matryoshka_weights(mcfg: MatryoshkaConfig, dims: list[int]) -> list[float]:
    """Per-dim weights after the reduction: 'mean' divides every weight by the number of dims,
    so the summed loss (and the effective step size) stays that of one dim."""
    weights = list(mcfg.weights) if mcfg.weights is not None else [1.0] * len(dims)
    if mcfg.reduction == "mean":
        weights = [w / len(dims) for w in weights]
    return weights


def build_loss(model: Any, cfg: LossConfig, mcfg: MatryoshkaConfig, dims: list[int], guide: Any = None) -> nn.Module:
    """Construct the inner loss and wrap it as the config says.

    ``dims`` are the validated Matryoshka dims (see :func:`matryoshka_train.models.resolve_dims`).
    """
    from sentence_transformers.sentence_transformer import losses as st_losses

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
        from .per_dim_loss import PerDimMatryoshkaLoss

        return PerDimMatryoshkaLoss(
            model, inner, matryoshka_dims=dims, matryoshka_weights=weights,
            n_dims_per_step=mcfg.n_dims_per_step, **mcfg.wrapper_kwargs,
        )
    if mcfg.wrapper == "matryoshka_2d":
        extra = {"n_dims_per_step": mcfg.n_dims_per_step, **mcfg.wrapper_kwargs}
        return st_losses.Matryoshka2dLoss(model, inner, matryoshka_dims=dims, matryoshka_weights=weights, **extra)
    return st_losses.AdaptiveLayerLoss(model, inner, **mcfg.wrapper_kwargs)
