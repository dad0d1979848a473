"""Losses: building the configured sentence-transformers loss with its Matryoshka wrapper, the
per-dim loss and the anchor term. The registry of loss names is :mod:`matryoshka_train.config.registry`.

See docs/design.md for the map of the package and the direction of imports.
"""

from ..config.registry import LOSSES, LossSpec
from .anchor import AnchoredLoss
from .build import build_loss, kwargs_problems, loss_class, matryoshka_weights
from .per_dim import PerDimMatryoshkaLoss

__all__ = ["LOSSES", "AnchoredLoss", "LossSpec", "PerDimMatryoshkaLoss", "build_loss", "kwargs_problems", "loss_class",
           "matryoshka_weights"]
