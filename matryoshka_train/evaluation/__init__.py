"""Per-dim evaluation: the Matryoshka evaluator, the evaluators' data (spec), BEIR/NanoBEIR, and
`mtrain eval` (standalone).

See docs/design.md for the map of the package and the direction of imports.
"""

from .evaluators import (
    EvalSpec,
    MatryoshkaEvaluator,
    aggregate_over_dims,
    bytes_per_vector,
    metric_name_problem,
    quantize,
)

__all__ = [
    "EvalSpec",
    "MatryoshkaEvaluator",
    "aggregate_over_dims",
    "bytes_per_vector",
    "metric_name_problem",
    "quantize",
]
