"""The other models a run loads beside the one it trains: the anchor's reference, the
distillation teacher, GIST guide models and MSE evaluators' teachers.

:func:`reference_config` is the one place such a model's config is built (each inherits the
trained model's loading settings, except that it is always a pretrained model), and
:func:`reference_models` lists every one a config names, with the YAML path errors are reported
under. ``mtrain check``, ``mtrain run`` and ``mtrain eval`` all load them from this list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.schema import ModelConfig, RunConfig
from ..errors import ConfigError, Problem, UserError
from .loading import load_model


@dataclass(frozen=True)
class Reference:
    """One extra model: where the config names it, its config, and its role
    ("anchor", "teacher", "guide" or "evaluator")."""

    where: str
    config: ModelConfig
    role: str


def reference_config(base: ModelConfig | None, name: str, keep_layers: bool = False) -> ModelConfig:
    """The config of a model named ``name`` that is loaded like ``base`` (dtype, pooling, ...), as a
    pretrained model with all its layers unless ``keep_layers`` (the anchor's reference is reduced
    like the model it anchors). Without ``base`` (an eval-only config): the model's own settings."""
    if base is None:
        return ModelConfig(name_or_path=name)
    # the revision pins the base model's repository, not another model's
    update: dict = {"name_or_path": name, "type": "pretrained", "revision": None}
    if not keep_layers:
        update["layers"] = None
    return base.model_copy(update=update)


def reference_models(config: RunConfig) -> list[Reference]:
    """Every extra model ``config`` names, in the order they are checked."""
    refs = []
    if config.anchor.weight > 0 and config.anchor.model is not None:
        refs.append(
            Reference("anchor.model", reference_config(config.model, config.anchor.model, keep_layers=True), "anchor")
        )
    if config.distill is not None:
        refs.append(Reference("distill.teacher", config.distill.teacher, "teacher"))
    refs += evaluator_teachers(config.evaluation.evaluators, config.model)
    for i, dcfg in enumerate(config.datasets):
        guide = config.loss_for(dcfg).guide_model
        if guide:
            where = f"datasets.{i}.loss.guide_model" if dcfg.loss else "loss.guide_model"
            refs.append(Reference(where, reference_config(config.model, guide), "guide"))
    unique = {ref.where: ref for ref in reversed(refs)}  # datasets sharing the top-level loss share its guide
    return [ref for ref in refs if unique[ref.where] is ref]


def load_reference(ref: Reference) -> Any:
    """Load one extra model; its problems are reported under ``ref.where``."""
    try:
        return load_model(ref.config)
    except UserError as exc:
        raise ConfigError([Problem(ref.where, p.message) for p in exc.problems]) from None


def evaluator_teachers(evaluators: list, base: ModelConfig | None) -> list[Reference]:
    """The teachers of MSE evaluators (``evaluation.evaluators.<i>.teacher``)."""
    return [
        Reference(f"evaluation.evaluators.{i}.teacher", reference_config(base, e.teacher), "evaluator")
        for i, e in enumerate(evaluators)
        if e.teacher
    ]
