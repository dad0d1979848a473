"""Datasets: reading sources, column and row checks, the eval split, distillation labels,
pre-tokenizing, and the no-duplicates batch sampler with its text hashes.

See docs/design.md for the map of the package and the direction of imports.
"""

from .sampler import FastNoDuplicatesBatchSampler
from .sources import PreparedDataset, prepare_dataset

__all__ = ["FastNoDuplicatesBatchSampler", "PreparedDataset", "prepare_dataset"]
