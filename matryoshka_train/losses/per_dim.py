"""MatryoshkaLoss that reports each dim's share of the loss, so metrics.jsonl shows which
truncation sizes are learning.

sentence-transformers' trainer logs every key of a loss that returns a dict of tensors (and
trains on their sum). :class:`PerDimMatryoshkaLoss` returns ``{"dim384": …, "dim256": …}``, each
value being that dim's *weighted* term, so the logged values add up to the logged ``loss``.

* Ordinary losses: the same loop as sentence-transformers' ``MatryoshkaLoss.forward`` (one
  model forward, shrunk per dim), keeping each term instead of only their sum.
* Gradient-cache losses (Cached*): the per-dim terms are computed inside ``calculate_loss``,
  where the cache replays them; they are recorded there (detached) and reported afterwards. The
  value that carries the gradient is the cached loss's own total; the first dim's entry is
  ``total − Σ other dims``, which equals that dim's term while keeping the gradient path intact.
* With ``n_dims_per_step > 0`` the dims not drawn in a step report 0 for that step, so a logged
  value is that dim's average contribution over the logging window.
* With a learned rotation (``matryoshka.rotation`` with ``decouple``), the terms below full size
  see the embeddings through :func:`~matryoshka_train.models.rotation.regrad`: same values, a
  gradient into the rotation only (see :mod:`matryoshka_train.models.rotation`).
* With ``similarity_weight > 0`` (``matryoshka.similarity_weight``) a ``similarity`` key joins the
  dims: per smaller dim, 1 − the Pearson correlation of its pairwise cosines over the step's texts
  with the full-size ones (:func:`similarity_term`), in the plain path from the one forward's
  embeddings, in the gradient-cache path inside the cache's loss step (the same gradient).
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
from sentence_transformers.sentence_transformer.losses.matryoshka import (
    CachedLossDecorator,
    ForwardDecorator,
    shrink,
)
from torch import Tensor

from ..models.rotation import regrad
from .fused_mnrl import fused_terms, why_not_fused

SIMILARITY_KEY = "similarity"


def similarity_term(full: Tensor, view: Tensor, dim: int) -> Tensor:
    """1 − the Pearson correlation between the pairwise cosines of ``view`` truncated to ``dim`` and
    those of ``full`` (detached: the full-size geometry is the target, not moved by this term),
    over every pair of distinct rows. Invariant to the scale and offset of the cosines, so it asks
    only that the small dim rank pairs as full size does, which is what an STS score measures."""
    target = F.normalize(full.detach().float(), dim=-1)
    small = shrink(view.float(), dim)
    n = full.size(0)
    off = ~torch.eye(n, dtype=torch.bool, device=full.device)
    t = (target @ target.T)[off]
    s = (small @ small.T)[off]
    t, s = t - t.mean(), s - s.mean()
    r = (t * s).sum() / (t.norm() * s.norm()).clamp_min(1e-12)
    return 1.0 - r


def similarity_total(full: Tensor, rotation: Any, dims_weights: list[tuple[int, float]], weight: float) -> Tensor:
    """``weight`` × Σ over the given (dim, dim weight) of ``dim weight × similarity_term``; with a
    decoupled rotation the small dims see ``full`` through :func:`regrad`, as their loss terms do."""
    view = full if rotation is None else regrad(full, rotation)
    return weight * torch.stack([w * similarity_term(full, view, d) for d, w in dims_weights]).sum()


def dim_key(dim: int) -> str:
    """The loss-component name of one dim, as it appears in metrics.jsonl."""
    return f"dim{dim}"


class _RecordingCachedDecorator(CachedLossDecorator):
    """sentence-transformers' per-dim loop for Cached* losses, remembering each dim's term."""

    def __init__(self, *args: Any, rotation: Any = None, full: int = 0, similarity_weight: float = 0.0,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.last: dict[int, Tensor] = {}
        self.last_similarity: Tensor | None = None
        self.rotation, self.full, self.similarity_weight = rotation, full, similarity_weight

    def _view(self, rep: Tensor, dim: int) -> Tensor:
        if self.rotation is not None and dim < self.full:
            # the zero term keeps a (zero) gradient on the cached embedding: the cache refuses
            # embeddings no term reached, e.g. when only smaller dims were drawn this step
            rep = regrad(rep, self.rotation) + rep * 0.0
        return shrink(rep, dim)

    def __call__(self, reps: list[list[Tensor]], *args: Any, **kwargs: Any) -> Tensor:
        indices = list(range(len(self.matryoshka_dims)))
        if 0 < self.n_dims_per_step < len(indices):
            indices = random.sample(indices, self.n_dims_per_step)
        self.last = {}
        loss: Any = 0.0
        for idx in indices:
            dim, weight = self.matryoshka_dims[idx], self.matryoshka_weights[idx]
            truncated = [[self._view(r, dim) for r in minibatch] for minibatch in reps]
            grads = torch.is_grad_enabled()
            leaves = [[r.detach().requires_grad_() for r in mb] for mb in truncated] if grads else truncated
            term = weight * self.fn(leaves, *args, **kwargs)
            self.last[dim] = term.detach() if isinstance(term, Tensor) else torch.tensor(float(term))
            loss = loss + term
            if grads:
                for t_mb, d_mb in zip(truncated, leaves):
                    for t, d in zip(t_mb, d_mb):
                        t.backward(weight * d.grad)
        self.last_similarity = None
        small = [(self.matryoshka_dims[i], self.matryoshka_weights[i]) for i in indices
                 if self.matryoshka_dims[i] < self.full]
        if self.similarity_weight > 0 and small:
            full = torch.cat([r for minibatch in reps for r in minibatch])
            term = similarity_total(full, self.rotation, small, self.similarity_weight)
            if torch.is_grad_enabled():
                term.backward()  # into the cached embeddings, like the per-dim terms above
            self.last_similarity = term.detach()
            loss = loss + self.last_similarity
        return loss


class _RotatedForward:
    """sentence-transformers' ``ForwardDecorator`` (one model forward per step, reused for every
    dim) for a model with a decoupled rotation: the full-size term gets the embeddings as they are,
    every smaller dim gets them through :func:`regrad` (gradient into the rotation only)."""

    def __init__(self, fn: Any, rotation: Any, full: int):
        self.fn, self.rotation, self.full = fn, rotation, full
        self.dim: int | None = None
        self.first: int | None = None
        self.cache: list[dict[str, Tensor]] = []
        self.embeddings: list[Tensor] = []
        self.idx = 0

    def set_dim(self, dim: int) -> None:
        self.dim, self.idx = dim, 0

    def __call__(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.first is None or self.first == self.dim:
            output = self.fn(features)
            self.cache.append(output)
            self.embeddings.append(output["sentence_embedding"])
            self.first = self.dim
        else:
            output = self.cache[self.idx]
        full = self.embeddings[self.idx]
        view = full if self.dim >= self.full else regrad(full, self.rotation)
        output["sentence_embedding"] = shrink(view, self.dim)
        self.idx += 1
        return output


class PerDimMatryoshkaLoss(MatryoshkaLoss):
    """Drop-in for sentence-transformers' ``MatryoshkaLoss`` whose forward returns one term per dim,
    so the trainer logs each dim's loss (it trains on their sum, as ``MatryoshkaLoss`` does).

    Works with gradient-cache losses (``Cached*``) too: their per-mini-batch terms are recorded
    per dim inside the cache's own backward.

    Args:
        model: The SentenceTransformer being trained.
        loss: The inner loss, computed on embeddings truncated to each dim.
        matryoshka_dims: The dims, largest first (e.g. ``[384, 256, 128, 64]``).
        matryoshka_weights: One weight per dim (default all 1).
        n_dims_per_step: ``-1`` for every dim every step; ``k > 0`` for k random dims per step.
        rotation: The model's rotation module (``matryoshka.rotation`` with ``decouple``): the terms
            below full size then train only it. ``None`` (default): every term trains everything.

    Returns:
        ``{"dim_<d>": weighted loss at dim d}`` for each dim used in the step.

    Example:
        ::

            from sentence_transformers import SentenceTransformer
            from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

            from matryoshka_train.losses import PerDimMatryoshkaLoss

            model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
            loss = PerDimMatryoshkaLoss(model, MultipleNegativesRankingLoss(model), matryoshka_dims=[384, 128, 32])
    """

    def __init__(self, *args: Any, rotation: Any = None, similarity_weight: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rotation = rotation
        self.similarity_weight = similarity_weight
        self.full = self.model.get_embedding_dimension() or max(self.matryoshka_dims)
        self.fused = False  # every dim in one pass (losses/fused_mnrl.py); set for a run by fused_losses()
        self.why_not_fused = "a gradient-cache loss" if self.uses_gradient_cache else why_not_fused(self.loss)
        if self.uses_gradient_cache:
            plain = self.loss.calculate_loss.fn  # undo the parent's decorator, put ours in its place
            self.loss.calculate_loss = _RecordingCachedDecorator(
                plain, self.matryoshka_dims, self.matryoshka_weights, self.n_dims_per_step,
                rotation=rotation, full=self.full, similarity_weight=similarity_weight,
            )

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        if self.uses_gradient_cache:
            return self._cached_forward(sentence_features, labels)
        if self.fused and self.why_not_fused is None:
            return self._fused_forward(sentence_features)
        original = self.model.forward
        terms: dict[int, Tensor] = {}
        captured: list[Tensor] = []  # each column's full-size embeddings, as the model returned them

        def capturing(features: dict[str, Tensor]) -> dict[str, Tensor]:
            output = original(features)
            captured.append(output["sentence_embedding"])
            return output

        try:
            decorated = (
                _RotatedForward(capturing, self.rotation, self.full)
                if self.rotation is not None
                else ForwardDecorator(capturing)
            )
            self.model.forward = decorated
            indices = self._drawn()
            for idx in indices:
                dim, weight = self.matryoshka_dims[idx], self.matryoshka_weights[idx]
                decorated.set_dim(dim)
                dim_labels = labels
                if (
                    isinstance(labels, Tensor)
                    and labels.ndim in (2, 3)
                    and labels.size(-1) == self.model.get_embedding_dimension()
                ):
                    dim_labels = labels[..., :dim]  # embedding targets shrink with the student
                terms[dim] = weight * self.loss(sentence_features, dim_labels)
        finally:
            self.model.forward = original
        out = self._by_dim(terms)
        small = [(self.matryoshka_dims[i], self.matryoshka_weights[i]) for i in indices
                 if self.matryoshka_dims[i] < self.full]
        if self.similarity_weight > 0 and small and captured:
            out[SIMILARITY_KEY] = similarity_total(torch.cat(captured), self.rotation, small, self.similarity_weight)
        return out

    def _drawn(self) -> list[int]:
        """The indices of this step's dims: all of them, or ``n_dims_per_step`` drawn at random."""
        indices = list(range(len(self.matryoshka_dims)))
        if 0 < self.n_dims_per_step < len(indices):
            indices = sorted(random.sample(indices, self.n_dims_per_step))
        return indices

    def _fused_forward(self, sentence_features: Iterable[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Every dim of the MNRL inner loss in one pass (:mod:`~matryoshka_train.losses.fused_mnrl`)."""
        # the name the inner loss's module embeds with: merged_columns patches it there when it is on
        embed = sys.modules[type(self.loss).__module__].embed_columns
        columns = embed(self.model, sentence_features)
        indices = self._drawn()
        dims = [self.matryoshka_dims[i] for i in indices]
        terms = fused_terms(columns, dims, [self.matryoshka_weights[i] for i in indices], self.loss.scale,
                            rotation=self.rotation, full=self.full)
        out = self._by_dim(dict(zip(dims, terms)))
        small = [(d, self.matryoshka_weights[i]) for d, i in zip(dims, indices) if d < self.full]
        if self.similarity_weight > 0 and small:
            out[SIMILARITY_KEY] = similarity_total(torch.cat(columns), self.rotation, small, self.similarity_weight)
        return out

    def _cached_forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        total = self.loss(sentence_features, labels)
        recorded = dict(getattr(self.loss.calculate_loss, "last", {}) or {})
        out = {dim_key(d): total.new_zeros(()) for d in self.matryoshka_dims}
        for dim, value in recorded.items():
            out[dim_key(dim)] = value.to(total.device, total.dtype)
        similarity = getattr(self.loss.calculate_loss, "last_similarity", None)
        if similarity is not None:
            out[SIMILARITY_KEY] = similarity.to(total.device, total.dtype)
        carrier = dim_key(next(iter(recorded), self.matryoshka_dims[0]))
        others = sum((v for k, v in out.items() if k != carrier), total.new_zeros(()))
        out[carrier] = total - others  # numerically this dim's term; carries the gradient-cache hook
        return out

    def _by_dim(self, terms: dict[int, Tensor]) -> dict[str, Tensor]:
        zero = next(iter(terms.values())).new_zeros(())
        return {dim_key(d): terms.get(d, zero) for d in self.matryoshka_dims}


@contextlib.contextmanager
def fused_losses(losses: Iterable[Any], enabled: bool, echo: Callable[[str], None] = print) -> Iterator[list[Any]]:
    """Within the block, every :class:`PerDimMatryoshkaLoss` among ``losses`` (and their submodules)
    whose inner loss allows it computes all its dims in one pass (``training.fused_loss``); the others
    keep the per-dim loop, with a note saying why. Yields the fused ones."""
    found = [m for loss in losses for m in loss.modules() if isinstance(m, PerDimMatryoshkaLoss)] if enabled else []
    fused = [m for m in found if m.why_not_fused is None]
    for m in found:
        if m.why_not_fused is not None:
            echo(f"Note: fused_loss: the per-dim loop stays for {type(m.loss).__name__} ({m.why_not_fused}).")
    for m in fused:
        m.fused = True
    try:
        yield fused
    finally:
        for m in fused:
            m.fused = False
