"""Anchoring to a reference model: keep the full-size embedding close to where it started.

Fine-tuning an already good encoder for Matryoshka truncation tends to drag its full-size
embedding away from what made it good. :class:`AnchoredLoss` adds

    weight × distance(trained full-size embedding, reference full-size embedding)

averaged over every text in the batch, where the reference is a frozen copy of the starting model
(or another model). Design points:

* **No extra forward of the trained model.** For ordinary losses we record the full-size
  embeddings the wrapped loss computes anyway (a pass-through on ``model.forward``, the same
  mechanism sentence-transformers' MatryoshkaLoss uses). For gradient-cache losses (Cached*)
  the term is added inside ``calculate_loss``, per mini-batch embedding, so its gradient joins the
  cache and flows back in the replayed mini-batch passes.
* **The reference is not a submodule.** It is held outside ``nn.Module`` registration, so it is
  never saved with the model, never wrapped by DDP, and never reaches the optimizer. It runs
  under ``torch.no_grad`` in eval mode, on the trained model's device, inside the trainer's
  autocast (so in the training precision).
* **Logged as its own term.** The loss returns ``{"base": …, "anchor": …}``; the trainer logs each
  key, so metrics.jsonl shows the anchor term beside the total. When the wrapped loss already
  returns components (the per-dim Matryoshka loss), they are kept and ``anchor`` joins them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers.base.losses.gradcache import uses_gradient_cache
from torch import Tensor, nn


def distance(trained: Tensor, reference: Tensor, kind: str) -> Tensor:
    """Mean distance between rows. 'cosine' is 1 − cos computed as ½‖a/|a| − b/|b|‖², which is
    the same value but exactly 0 when the rows are identical; 'mse' is the mean squared error."""
    reference = reference.to(trained.dtype)
    if kind == "cosine":
        a = nn.functional.normalize(trained, dim=-1)
        b = nn.functional.normalize(reference, dim=-1)
        return 0.5 * (a - b).pow(2).sum(-1).mean()
    return (trained - reference).pow(2).mean()


class AnchoredLoss(nn.Module):
    """Wrap a (Matryoshka) loss with a pull toward a frozen reference model's full-size embeddings.

    The term is ``weight × distance(model embedding, reference embedding)`` on the full-size
    embeddings the wrapped loss computes anyway (no extra forward of the trained model). The
    reference is never saved, never in the optimizer and never wrapped by DDP.

    Args:
        model: The SentenceTransformer being trained.
        loss: The loss to wrap (plain, Matryoshka, or a gradient-cache ``Cached*`` loss).
        reference: The frozen reference model (see :meth:`frozen_copy_of`).
        weight: Weight of the anchor term; 0 turns it into a no-op.
        kind: ``"cosine"`` (1 − cos, halved) or ``"mse"`` (mean squared error).

    Returns:
        ``{"base": ..., "anchor": ...}`` (or the wrapped loss's per-dim keys and ``"anchor"``), which
        the trainer sums and logs per key.

    Example:
        ::

            from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

            from matryoshka_train.losses import AnchoredLoss

            inner = MultipleNegativesRankingLoss(model)
            loss = AnchoredLoss(model, inner, AnchoredLoss.frozen_copy_of(model), weight=0.1, kind="cosine")
    """

    def __init__(self, model: nn.Module, loss: nn.Module, reference: nn.Module, weight: float, kind: str = "cosine"):
        super().__init__()
        self.model = model
        self.loss = loss
        self.weight = float(weight)
        self.kind = kind
        reference.eval()
        reference.requires_grad_(False)
        object.__setattr__(self, "reference", reference)  # deliberately not a registered submodule
        self.reference_seconds = 0.0
        self.calls = 0
        self._column_references: list[Tensor] = []
        self._last_anchor: Tensor | None = None
        self.gradient_cache = _innermost_cached(loss)
        if self.gradient_cache is not None:
            self.gradient_cache.calculate_loss = _AnchorInCachedLoss(self.gradient_cache.calculate_loss, self)

    @classmethod
    def frozen_copy_of(cls, model: nn.Module) -> nn.Module:
        return copy.deepcopy(model)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> dict[str, Tensor]:
        features = list(sentence_features)
        if self.gradient_cache is not None:
            # the cached loss embeds column by column; the anchor joins its gradient cache
            self._column_references = [self._embed_reference(f) for f in features]
            base = self.loss(features, labels)
            zero = next(iter(base.values())) if isinstance(base, dict) else base
            anchor = self._last_anchor if self._last_anchor is not None else zero.new_zeros(())
            return _with_anchor(base, anchor.detach())

        trained: list[Tensor] = []
        references: list[Tensor] = []
        original = self.model.forward

        def record(features_in: dict[str, Tensor], *args: Any, **kwargs: Any) -> dict[str, Tensor]:
            # losses may embed several columns in one merged call: mirror every call exactly
            reference_input = dict(features_in)  # modules add keys to the dicts they are given
            output = original(features_in, *args, **kwargs)
            trained.append(output["sentence_embedding"])  # full size: truncation happens after this
            references.append(self._embed_reference(reference_input))
            return output

        self.model.forward = record
        try:
            base = self.loss(features, labels)
        finally:
            vars(self.model).pop("forward", None)
        self.calls += 1
        return _with_anchor(base, self.term(trained, references))

    def term(self, trained: list[Tensor], references: list[Tensor]) -> Tensor:
        """weight × mean distance over every text embedded for the batch."""
        total = sum(distance(t, r, self.kind) * t.shape[0] for t, r in zip(trained, references))
        rows = sum(t.shape[0] for t in trained)
        return self.weight * total / max(rows, 1)

    @torch.no_grad()
    def _embed_reference(self, features: dict[str, Tensor]) -> Tensor:
        start = time.perf_counter()
        device = next(self.model.parameters()).device
        if next(self.reference.parameters()).device != device:
            self.reference.to(device)
        out = self.reference(dict(features))["sentence_embedding"].detach()
        self.reference_seconds += time.perf_counter() - start
        return out


def _with_anchor(base: Tensor | dict[str, Tensor], anchor: Tensor) -> dict[str, Tensor]:
    """``{"base", "anchor"}`` for a plain loss; a loss that already reports components (e.g. the
    per-dim Matryoshka loss's ``{"dim384": …}``) keeps them, with ``anchor`` added beside."""
    if isinstance(base, dict):
        return {**base, "anchor": anchor}
    return {"base": base, "anchor": anchor}


class _AnchorInCachedLoss:
    """Replaces a Cached* loss's ``calculate_loss``: adds the anchor term on the full-size
    mini-batch embeddings (which are leaves with ``requires_grad``), back-propagating it into the
    gradient cache when the loss does its own backward."""

    def __init__(self, fn: Any, owner: AnchoredLoss):
        self.fn = fn
        self.owner = owner

    def __call__(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        base = self.fn(reps, labels, with_backward=with_backward)
        trained = [torch.cat(column) for column in reps]  # mini-batches are contiguous, in order
        anchor = self.owner.term(trained, self.owner._column_references)
        if with_backward:
            anchor.backward()
            self.owner.calls += 1
        self.owner._last_anchor = anchor.detach()
        return base


def _innermost_cached(loss: nn.Module) -> nn.Module | None:
    """The gradient-cache loss inside any wrappers (MatryoshkaLoss keeps it as ``.loss``)."""

    current: Any = loss
    for _ in range(4):
        # MatryoshkaLoss also reports uses_gradient_cache when it wraps one; the cached loss itself
        # is the one with calculate_loss
        if uses_gradient_cache(current) and hasattr(current, "calculate_loss"):
            return current
        current = getattr(current, "loss", None)
        if current is None:
            return None
    return None
