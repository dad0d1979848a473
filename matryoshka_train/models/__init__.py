"""Models: loading the trained model (hub, directory, ``package:``, static), dims, freezing, the
other models a run loads (references), and the sorted forward pass.

See docs/design.md for the map of the package and the direction of imports.
"""

from .loading import layerwise_learning_rates, load_model, resolve_dims

__all__ = ["layerwise_learning_rates", "load_model", "resolve_dims"]
