"""The config: its schema, the loss registry it names losses from, loading (YAML, ``extends``,
``--set``) and one-line error messages. Knows nothing of models or data.

The names below are the package's public face (``from matryoshka_train.config import load_config``).
See docs/design.md for the map of the package and the direction of imports.
"""

from .loading import apply_override, dump_resolved, load_config, load_eval_config, load_raw, validate
from .schema import (
    AnchorConfig,
    CarbonConfig,
    DatasetConfig,
    DistillConfig,
    EvalConfig,
    EvalSplitConfig,
    EvaluationConfig,
    EvaluatorConfig,
    LossConfig,
    MatryoshkaConfig,
    ModelConfig,
    RunConfig,
    SourceConfig,
    StageConfig,
    TrainingConfig,
)

__all__ = [
    "AnchorConfig", "CarbonConfig", "DatasetConfig", "DistillConfig", "EvalConfig", "EvalSplitConfig",
    "EvaluationConfig", "EvaluatorConfig", "LossConfig", "MatryoshkaConfig", "ModelConfig", "RunConfig",
    "SourceConfig", "StageConfig", "TrainingConfig", "apply_override", "dump_resolved", "load_config",
    "load_eval_config", "load_raw", "validate",
]
