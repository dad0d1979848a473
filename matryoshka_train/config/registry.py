"""The loss registry: which losses a config may name, their aliases, and what columns each reads.

Data only (no torch, no sentence-transformers): the config schema validates loss names against it,
and :mod:`matryoshka_train.losses` builds the named classes. It lives with the config because it is
the config's vocabulary; under ``losses/`` the schema would import upward.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def gradient_cache(self) -> bool:
        """Embeds each batch in mini-batches (GradCache: the Cached* losses)."""
        return self.class_name.startswith("Cached")

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

def canonical_loss_name(name: str) -> str | None:
    """'mnrl', 'MultipleNegativesRankingLoss' and 'multiplenegativesrankingloss' all name one loss."""
    if name in LOSSES:
        return name
    return _ALIASES.get(name.lower())
