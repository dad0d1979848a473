"""Every Matryoshka dim of MultipleNegativesRankingLoss in one pass (``training.fused_loss``).

sentence-transformers' ``MatryoshkaLoss`` computes the inner loss once per dim: truncate, normalize,
similarity matrix, softmax, for each of (say) five dims, forward and backward. The arithmetic is
small, but each dim is some 300 tensor operations, about 1,600 per step for five dims. On a GPU
whose step is bound by the host's work of launching operations (docs/benchmarks.md, findings 5-6),
that count is the cost.

Here the dims share one pass. For dims ``d_1 < … < d_k`` and anchors ``q``, documents ``c``
(positives, then any negatives):

* the dot product of ``q[:, :d]`` and ``c[:, :d]`` for every dim at once is one batched matrix
  product of ``k`` copies of ``q``, copy ``j`` zeroed past ``d_j``, with ``c``;
* each row's norm at every dim comes from one running sum of its squares;
* so the cosine similarities of every dim are those products over the norms, and the loss of every
  dim is one log-sum-exp over the ``[k, B, M]`` scores, minus the positives' scores.

That is the loss ``MultipleNegativesRankingLoss`` computes at each dim, with its defaults (cosine
similarity, anchor-to-document direction, no hardness term, no gathering across devices), up to
float rounding (the norms are summed in another order): ``tests/test_fused_loss.py`` compares loss,
per-dim terms and gradients. It takes some 400 operations for five dims instead of ~1,600
(``scripts/bench/fused_loss.py``: 415 vs 1,593, and 1.96x the loop's speed on a CPU), although every
dim's product runs full width, masked: 2.2x the loop's multiply-adds, in one matrix product.

A decoupled rotation (``matryoshka.rotation.decouple``) is honoured as
:class:`~matryoshka_train.losses.per_dim.PerDimMatryoshkaLoss` does it: the dims below full size see
the embeddings through :func:`~matryoshka_train.models.rotation.regrad`.
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers import util
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from torch import Tensor

from ..models.rotation import regrad


def why_not_fused(inner: Any) -> str | None:
    """Why the inner loss cannot take the fused pass (None: it can)."""
    if type(inner) is not MultipleNegativesRankingLoss:
        return f"{type(inner).__name__} is not MultipleNegativesRankingLoss"
    if getattr(inner, "similarity_fct", None) is not util.cos_sim:
        return "its similarity is not cosine"
    if tuple(getattr(inner, "directions", ("query_to_doc",))) != ("query_to_doc",):
        return "it scores more directions than anchor-to-document"
    if getattr(inner, "hardness_mode", None) and getattr(inner, "hardness_strength", 0.0) > 0.0:
        return "it adds a hardness term"
    if getattr(inner, "gather_across_devices", False):
        return "it gathers across devices"
    return None


def fused_terms(
    columns: list[Tensor], dims: list[int], weights: list[float], scale: float,
    rotation: Any = None, full: int | None = None,
) -> list[Tensor]:
    """The weighted MNRL term of each of ``dims`` (in the order given) from one column of anchors and
    one or more of documents, all ``[B, D]``; ``rotation`` and ``full``: dims below ``full`` see the
    embeddings through :func:`regrad`."""
    anchors, docs = columns[0], torch.cat(columns[1:])
    full = full or anchors.shape[1]
    small = [i for i in range(len(dims)) if rotation is not None and dims[i] < full]
    groups = [(anchors, docs, [i for i in range(len(dims)) if i not in small])]
    if small:  # the small dims' view: same values, gradient into the rotation only
        groups.append((regrad(anchors, rotation), regrad(docs, rotation), small))
    per_dim: dict[int, Tensor] = {}
    for q, c, indices in groups:
        if indices:
            per_dim.update(zip(indices, _mnrl_at(q, c, [dims[i] for i in indices], scale)))
    return [weights[i] * per_dim[i] for i in range(len(dims))]


def _mnrl_at(q: Tensor, c: Tensor, dims: list[int], scale: float) -> Tensor:
    """MNRL's loss at each of ``dims`` for anchors ``q`` ``[B, D]`` and documents ``c`` ``[M, D]``
    (document i is anchor i's positive): ``[k]``."""
    (batch, width), k = q.shape, len(dims)
    ds = torch.tensor(dims, device=q.device)
    keep = (torch.arange(width, device=q.device)[None, :] < ds[:, None]).to(q.dtype)  # [k, D]
    # the prefix dot products of every dim as one matrix product: k masked copies of q against c
    dots = ((q[None] * keep[:, None, :]).reshape(k * batch, width) @ c.T).view(k, batch, -1)  # [k, B, M]
    norm_q = (q * q).cumsum(1)[:, ds - 1].clamp_min(1e-24).sqrt()  # [B, k]: each row's norm at each dim
    norm_c = (c * c).cumsum(1)[:, ds - 1].clamp_min(1e-24).sqrt()  # [M, k]
    scores = dots / (norm_q.T[:, :, None] * norm_c.T[:, None, :]) * scale
    positives = scores.diagonal(dim1=1, dim2=2)[:, :batch]
    return (torch.logsumexp(scores, dim=2) - positives).mean(dim=1)
