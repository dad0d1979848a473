"""The sweep file of ``mtrain sweep``: a base config, a search space over its keys, an objective.

A sweep file is checked in two passes, both before any trial starts:

1. its own schema (:class:`SweepConfig`, strict like the run config: unknown keys are errors);
2. against the base config (:func:`check_against_base`): every searched key gets each of its
   extreme values (``low`` and ``high``, every choice) applied to the base config, which is then
   validated as a run config, so a key that does not exist or a value the schema refuses is
   reported as ``search_space.<key>: ...`` — and the objective's evaluator and dim must exist in
   the base config.

Every problem is one line naming the sweep file's YAML path and the fix, as for run configs.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ..config.loading import apply_override, load_raw, read_yaml, validate
from ..config.messages import did_you_mean, schema_problems
from ..config.schema import Section
from ..errors import ConfigError, Problem

Scalar = bool | int | float | str | None


class ParamConfig(Section):
    """One searched key. Give ``choices`` (categorical), ``grid`` (values tried exhaustively by the
    grid sampler; a categorical for the others) or a range ``low``/``high`` (int when both are
    integers, else float; ``log`` samples on a log scale, ``step`` discretises)."""

    choices: list[Any] | None = Field(None, description="Categorical: one of these values "
                                                        "(any YAML value, lists included).")
    grid: list[Any] | None = Field(None, description="Grid values: the grid sampler tries "
                                                     "every combination of every key's grid.")
    low: int | float | None = Field(None, description="Range: lowest value (inclusive).")
    high: int | float | None = Field(None, description="Range: highest value (inclusive).")
    log: bool = Field(False, description="Range: sample on a log scale (low must be > 0).")
    step: int | float | None = Field(None, gt=0, description="Range: only values low + k·step.")
    type: Literal["int", "float"] | None = Field(None, description="Range: int or float; default int when low and "
                                                                   "high are both integers.")

    @model_validator(mode="after")
    def _one_kind(self) -> ParamConfig:
        kinds = [k for k, given in (("choices", self.choices is not None), ("grid", self.grid is not None),
                                    ("range", self.low is not None or self.high is not None)) if given]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choices: [...], grid: [...] or a range (low and high)")
        values = self.choices if self.choices is not None else self.grid
        if values is not None and not values:
            raise ValueError("list at least one value")
        if kinds[0] == "range":
            if self.low is None or self.high is None:
                raise ValueError("a range needs both low and high")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) is above high ({self.high}); swap them")
            if self.log and self.low <= 0:
                raise ValueError(f"a log range needs low > 0, got {self.low}")
            if self.log and self.step is not None:
                raise ValueError("give log or step, not both")
        return self

    @property
    def kind(self) -> str:
        return "choices" if self.choices is not None else "grid" if self.grid is not None else "range"

    @property
    def is_int(self) -> bool:
        if self.type is not None:
            return self.type == "int"
        return isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.low, bool)

    def values_to_check(self) -> list[Any]:
        """The values validated against the base config before the sweep starts."""
        if self.kind == "range":
            return [int(self.low), int(self.high)] if self.is_int else [float(self.low), float(self.high)]
        return list(self.choices if self.choices is not None else self.grid)


class _TypedSection(Section):
    """A section whose ``type`` may be given alone: ``sampler: random`` means ``{type: random}``."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value


class SamplerConfig(_TypedSection):
    type: Literal["tpe", "random", "grid"] = Field("tpe", description="tpe (Bayesian), random, or grid (every "
                                                                      "combination of the grid values).")
    seed: int | None = Field(42, description="Seed of the sampler; a driver uses seed + its worker index + the trials "
                                             "already in the study. "
                                "null: seeded by the OS (use it with drivers on several machines).")
    n_startup_trials: int = Field(5, ge=0, description="tpe: random trials before the model takes over.")


class PrunerConfig(_TypedSection):
    """Stop a trial early when its evaluations during training look worse than others'. Needs
    periodic evaluation in the trials (``training.eval_strategy: steps`` with ``eval_steps``)."""

    type: Literal["none", "median", "hyperband"] = Field("none", description="none, median (Optuna's "
                                                                             "MedianPruner) or hyperband.")
    n_startup_trials: int = Field(2, ge=0, description="median: trials that finish before any is pruned.")
    n_warmup_steps: int = Field(0, ge=0, description="median: training steps before a trial can be pruned.")
    min_resource: int = Field(1, gt=0, description="hyperband: fewest training steps a trial gets.")
    max_resource: int | Literal["auto"] = Field("auto", description="hyperband: most training steps (auto: from the "
                                                                    "first finished trial).")
    reduction_factor: int = Field(3, ge=2, description="hyperband: keep 1/reduction_factor of the trials at each rung.")


class ObjectiveConfig(Section):
    """What a trial scores: one evaluator's metric after training, at one ``dim`` or aggregated over
    the evaluated dims (``mean``, ``min``, or ``weighted``: sum of weight × value)."""

    evaluator: str = Field(description="An evaluator name of the base config "
                                       "(evaluation.evaluators[].name, or its default).")
    metric: str = Field(description="A metric that evaluator reports, e.g. cosine_accuracy, spearman_cosine, ndcg@10.")
    dim: int | None = Field(None, gt=0, description="Score at this dim (one of the evaluated dims).")
    aggregate: Literal["mean", "min", "weighted"] | None = Field(None, description="Or aggregate over "
                                                                                   "the evaluated dims.")
    weights: list[float] | None = Field(None, description="weighted: one weight per evaluated dim, largest dim first.")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="maximize (accuracy, nDCG) "
                                                                               "or minimize (an MSE).")

    @model_validator(mode="after")
    def _one_way(self) -> ObjectiveConfig:
        if (self.dim is None) == (self.aggregate is None):
            raise ValueError("give exactly one of dim (score at one dim) or aggregate (mean, min or weighted)")
        if (self.aggregate == "weighted") != (self.weights is not None):
            raise ValueError("aggregate: weighted needs weights (one per "
                             "evaluated dim), and weights need aggregate: weighted")
        return self

    def label(self) -> str:
        at = f"dim{self.dim}" if self.dim else f"dim{self.aggregate}"
        return f"{self.evaluator}_{at}_{self.metric}"


class SweepConfig(Section):
    """The sweep file (``mtrain sweep SWEEP.yaml``)."""

    base: str = Field(description="The run config every trial starts from; relative to the sweep file.")
    output_dir: str = Field("outputs/sweep", description="The sweep directory: study.db, "
                                                         "trials/<n>/, trials.md, best.yaml, plots.")
    study_name: str | None = Field(None, description="Name of the study in the storage "
                                                     "(default: the sweep file's name).")
    n_trials: int = Field(10, gt=0, description="Trials the study should finish (completed, "
                                                "pruned or failed) across all workers.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="How trial values are "
                                                                              "chosen (see sampler).")
    pruner: PrunerConfig = Field(default_factory=PrunerConfig, description="Early stopping of poor "
                                                                           "trials (see pruner).")
    objective: ObjectiveConfig = Field(description="What the sweep optimises (see objective).")
    search_space: dict[str, ParamConfig] = Field(description="Dotted config key (as for "
                                                             "--set) -> choices, grid or range.")
    fixed: dict[str, Any] = Field(default_factory=dict, description="Dotted config key -> value, applied to every "
                                                                    "trial (e.g. a short training.max_steps).")
    launcher: str | None = Field(
        None, description="Command prefix for multi-GPU trials, e.g. 'accelerate launch --num_processes 2': "
        "a trial runs '<launcher> -m matryoshka_train run ...' instead of 'python -m matryoshka_train run ...'.",
    )

    @field_validator("search_space")
    @classmethod
    def _not_empty(cls, value: dict[str, ParamConfig]) -> dict[str, ParamConfig]:
        if not value:
            raise ValueError("search one key at least, e.g. training.learning_rate: "
                             "{low: 1.0e-5, high: 1.0e-4, log: true}")
        return value

    @model_validator(mode="after")
    def _grid(self) -> SweepConfig:
        if self.sampler.type == "grid":
            ranges = [k for k, p in self.search_space.items() if p.kind == "range"]
            if ranges:
                raise ValueError(f"search_space.{ranges[0]}: the grid sampler needs a list of values: give grid: "
                                 "[...] instead of a range")
        overlap = sorted(set(self.fixed) & set(self.search_space))
        if overlap:
            raise ValueError(f"fixed.{overlap[0]}: this key is also searched; "
                             "remove it from fixed or from search_space")
        return self


# --------------------------------------------------------------------------------------------
# values <-> --set strings


def encode_choice(value: Any) -> Scalar:
    """Optuna stores categorical choices as scalars; lists and mappings travel as JSON text."""
    return value if isinstance(value, (bool, int, float, str)) or value is None else "json:" + json.dumps(value)


def decode_choice(value: Any) -> Any:
    return json.loads(value[5:]) if isinstance(value, str) and value.startswith("json:") else value


def set_text(value: Any) -> str:
    """The ``--set`` text of a value: YAML flow for lists, mappings, booleans and null."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def overrides_for(params: dict[str, Any], fixed: dict[str, Any]) -> list[str]:
    """``key=value`` strings for ``--set``: the fixed keys, then the trial's (decoded) params."""
    items = {**fixed, **{k: decode_choice(v) for k, v in params.items()}}
    return [f"{k}={set_text(v)}" for k, v in items.items()]


# --------------------------------------------------------------------------------------------
# loading and checking


def load_sweep(path: str | os.PathLike) -> tuple[SweepConfig, Path]:
    """Read and validate a sweep file. Returns it and the base config's path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found (looked in {path.resolve().parent})", where=str(path))
    data = read_yaml(path)  # the run config's reader: malformed YAML is named with line and column
    if not isinstance(data, dict):
        raise ConfigError("a sweep file is a mapping (base, search_space, objective, ...)", where=str(path))
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(schema_problems(exc, SweepConfig)) from None
    if sweep.study_name is None:
        sweep = sweep.model_copy(update={"study_name": path.stem})
    return sweep, path.parent / sweep.base


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key to a typed value (a float stays a float in the YAML written from ``raw``);
    the path is created and checked exactly as ``--set`` does."""
    apply_override(raw, f"{key}={set_text(value)}")
    *parents, last = key.split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = copy.deepcopy(value)


def base_raw(sweep: SweepConfig, base_path: Path) -> dict[str, Any]:
    """The base config (``extends`` followed) with the sweep's fixed keys applied."""
    raw = load_raw(base_path)
    for key, value in sweep.fixed.items():
        try:
            set_key(raw, key, value)
        except ConfigError as exc:
            raise ConfigError([Problem(f"fixed.{key}", p.message) for p in exc.problems]) from None
    return raw


def check_against_base(sweep: SweepConfig, base_path: Path) -> dict[str, Any]:
    """Every problem the sweep would hit, found before any trial starts; returns the base raw config.

    Raises :class:`ConfigError` with one line per problem."""
    raw = base_raw(sweep, base_path)
    try:
        config = validate(copy.deepcopy(raw))
    except ConfigError as exc:
        raise ConfigError(
            [
                Problem(
                    f"{base_path}: {p.where}" if sweep.fixed.get(p.where) is None else f"fixed.{p.where}", p.message
                )
                for p in exc.problems
            ]
        ) from None
    problems: list[Problem] = []
    for key, param in sweep.search_space.items():
        seen: set[str] = set()
        for value in param.values_to_check():
            trial = copy.deepcopy(raw)
            try:
                apply_override(trial, f"{key}={set_text(value)}")
                validate(trial)
            except ConfigError as exc:
                for p in exc.problems:
                    line = f"{p.where}: {p.message}" if p.where not in (key, "--set") else p.message
                    if line not in seen:
                        seen.add(line)
                        shown = (
                            f" (with value {set_text(value)})"
                            if p.where == key and not p.message.startswith("unknown key")
                            else ""
                        )
                        problems.append(Problem(f"search_space.{key}", line + shown))
    names = [ev.display_name() for ev in config.evaluation.evaluators]
    obj = sweep.objective
    if obj.evaluator not in names:
        known = ", ".join(names) or "none: add evaluation.evaluators to the base config"
        problems.append(
            Problem(
                "objective.evaluator",
                f"no evaluator named '{obj.evaluator}'{did_you_mean(obj.evaluator, names)}; evaluators: {known}",
            )
        )
    dims = config.evaluation.dims or config.matryoshka.dims
    if obj.dim is not None and dims and obj.dim not in dims:
        problems.append(
            Problem("objective.dim", f"dim {obj.dim} is not evaluated; evaluated dims: {', '.join(map(str, dims))}")
        )
    if obj.weights is not None:
        if not dims:
            problems.append(
                Problem(
                    "objective.weights", "set matryoshka.dims in the base config so the weights can be matched to dims"
                )
            )
        elif len(obj.weights) != len(dims):
            problems.append(
                Problem(
                    "objective.weights",
                    f"{len(obj.weights)} weights for {len(dims)} evaluated dims "
                    f"({', '.join(map(str, dims))}): give one per dim",
                )
            )
    if sweep.pruner.type != "none" and config.training.eval_strategy != "steps":
        problems.append(
            Problem(
                "pruner",
                "pruning reads the evaluations made during training: set "
                "training.eval_strategy: steps "
                "and training.eval_steps (in fixed: or the base config), or pruner: none",
            )
        )
    if problems:
        raise ConfigError(problems)
    return raw
