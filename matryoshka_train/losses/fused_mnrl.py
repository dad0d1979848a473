"""Every Matryoshka dim of MultipleNegativesRankingLoss in one pass (``training.fused_loss``).

sentence-transformers' ``MatryoshkaLoss`` computes the inner loss once per dim: truncate, normalize,
similarity matrix, softmax, for each of (say) five dims, forward and backward. The arithmetic is
small, but each dim is some 250 tensor operations, about 1,500 per step for five dims. On a GPU whose step is bound by
the host's work of launching operations (docs/benchmarks.md, findings 5-6), that count is the cost.

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
per-dim terms and gradients. It takes some 280 operations for five dims instead of ~1,500.

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
    width, batch = anchors.shape[1], anchors.shape[0]
    full = full or width
    order = sorted(range(len(dims)), key=lambda i: dims[i])
    ds = torch.tensor([dims[i] for i in order], device=anchors.device)
    small = [dims[i] < full and rotation is not None for i in order]
    if any(small):  # the small dims' view: same values, gradient into the rotation only
        views_q, views_c = regrad(anchors, rotation), regrad(docs, rotation)
        q = torch.stack([views_q if s else anchors for s in small])
        c = torch.stack([views_c if s else docs for s in small])
    else:
        q, c = anchors.expand(len(order), -1, -1), docs.expand(len(order), -1, -1)
    keep = (torch.arange(width, device=anchors.device)[None, :] < ds[:, None]).to(anchors.dtype)  # [k, D]
    dots = torch.bmm(q * keep[:, None, :], c.transpose(1, 2))  # [k, B, M]: the prefix dot products
    at = (ds - 1)[:, None, None]
    norm_q = (q * q).cumsum(2).gather(2, at.expand(-1, batch, 1)).clamp_min(1e-24).sqrt()  # [k, B, 1]
    norm_c = (c * c).cumsum(2).gather(2, at.expand(-1, c.shape[1], 1)).clamp_min(1e-24).sqrt()  # [k, M, 1]
    scores = dots / (norm_q * norm_c.transpose(1, 2)) * scale
    positives = scores.diagonal(dim1=1, dim2=2)[:, :batch]  # anchor i's own positive is document i
    per_dim = (torch.logsumexp(scores, dim=2) - positives).mean(dim=1)  # [k], in ascending dim order
    weighted = {i: weights[i] * per_dim[position] for position, i in enumerate(order)}
    return [weighted[i] for i in range(len(dims))]
