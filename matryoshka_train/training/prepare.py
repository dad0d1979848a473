"""The one preparation path: what `mtrain check` verifies and `mtrain run` starts from.

:func:`prepare` goes through the same steps for both, in the same order: problems found in the
config alone, the datasets, the model and its dims, each dataset against the model, the extra
models (anchor reference, distillation teacher, guides, evaluator teachers), and the evaluators'
data. ``check`` collects every problem; ``run`` stops at the end of the first step that found
one. So a config `check` accepts is a config `run` starts, and when `check` refuses one, `run`
refuses it with the same first problem. (`mtrain eval` uses the same dataset, model and
evaluator functions for the parts it has.)
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sentence_transformers import SentenceTransformerTrainingArguments

from ..config.messages import did_you_mean
from ..config.registry import LOSSES
from ..config.schema import RunConfig
from ..data.distill_labels import takes_teacher_labels
from ..data.loading import prepare_datasets
from ..data.sources import HubUnavailable, PreparedDataset, label_widths, rows_named, source_texts
from ..errors import ConfigError, DataError, Problem, UserError
from ..evaluation.evaluators import metric_name_problem, reference_key_problem
from ..evaluation.spec import ResolvedEvaluators, resolve_evaluators
from ..hub import hub_reachable
from ..losses.build import kwargs_problems
from ..models.loading import has_layers, is_local, load_model, resolve_dims
from ..models.lora import missing_peft_message
from ..models.references import load_reference, reference_models
from . import distributed


@dataclass
class Preparation:
    """What :func:`prepare` found. ``model`` is None when it could not be loaded (or, for check, is
    on the hub while offline); ``unverified`` lists what check could not verify offline."""

    config: RunConfig
    model: Any = None
    dims: list[int] | None = None
    datasets: list[PreparedDataset] = field(default_factory=list)
    references: dict[str, Any] = field(default_factory=dict)
    evaluators: ResolvedEvaluators | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    pca_texts: list[str] | None = None  # matryoshka.rotation.pca_source's texts, when one is set

    @property
    def embedding_dim(self) -> int | None:
        return self.model.get_embedding_dimension() if self.model is not None else None


def prepare(config: RunConfig, echo: Callable[[str], None] = print, check: bool = False,
            before_evaluators: Callable[[Preparation], None] | None = None) -> Preparation:
    """Resolve everything a run needs before training, for ``mtrain check`` (``check=True``: collect
    every problem, never raise for user errors, do not try the hub when it is unreachable) or for
    ``mtrain run`` (raise at the end of the first step with problems). ``before_evaluators`` runs
    just before the evaluators' data is resolved (run: the distillation labels are attached there)."""
    prep = Preparation(config)
    hub_ok = hub_reachable() if check else True

    def step(problems: list[Problem], error: type[UserError]) -> None:
        prep.problems += [p for p in problems if p not in prep.problems]  # e.g. a missing extra found twice
        if problems and not check:
            raise error(problems)

    step(config_problems(config) + hub_problems(config), ConfigError)

    read = prepare_datasets(config, hub_ok, offline_is_problem=not check)
    prep.datasets = list(read.prepared.values())
    prep.unverified += read.unverified
    step(read.problems, DataError)
    step(read_pca_source(prep, hub_ok, check, echo), DataError)

    problems: list[Problem] = []
    if check and not (is_local(config.model.name_or_path) or hub_ok):
        prep.unverified.append(f"model: {config.model.name_or_path} is on the hub: not verified offline")
    else:
        try:
            prep.model = load_model(config.model)
            prep.lines.append(f"Model: {config.model.name_or_path} · embedding size {prep.embedding_dim}")
        except UserError as exc:
            problems += exc.problems
    try:
        prep.dims = resolve_dims(config.matryoshka, prep.embedding_dim)
        prep.lines.append(f"Matryoshka dims: {prep.dims}" + ("" if prep.embedding_dim else " (sizes not "
                                                                                           "verified offline)"))
    except UserError as exc:
        problems += exc.problems
    step(problems, ConfigError)

    problems = []
    for i, prepared in read.prepared.items():
        found, warnings = dataset_problems(config, i, prepared, prep.embedding_dim)
        problems += found
        prep.warnings += warnings
        if not check:
            for warning in warnings:
                echo(f"Warning: {warning}")
    if len(read.prepared) == len(config.datasets):  # every dataset read: a column may be in any of them
        problems += prompt_column_problems(config.training.prompts,
                                           [p.train.column_names for p in read.prepared.values()], "training.prompts")
    step(problems, DataError)

    problems = []
    for ref in reference_models(config):
        if check and not (is_local(ref.config.name_or_path) or hub_ok):
            prep.unverified.append(f"{ref.where}: {ref.config.name_or_path} is on the hub: not verified offline")
            continue
        try:
            model = prep.references[ref.where] = load_reference(ref)
        except UserError as exc:
            problems += exc.problems
            continue
        width = model.get_embedding_dimension()
        prep.lines.append(f"{ref.where}: {ref.config.name_or_path} · embedding size {width}")
        problems += reference_width_problems(ref.role, ref.where, width, prep.embedding_dim)
    step(problems, ConfigError)

    if before_evaluators is not None:
        before_evaluators(prep)
    eval_rows = {d.name: d.eval for d in prep.datasets}
    labelled = {d.name for d in config.datasets if takes_teacher_labels(config, d)}
    prep.evaluators = resolve_evaluators(config.evaluation, eval_rows, hub_ok, labelled)
    prep.unverified += prep.evaluators.unverified
    step(prep.evaluators.problems, DataError)
    return prep


def read_pca_source(prep: Preparation, hub_ok: bool, check: bool,
                    echo: Callable[[str], None] = print) -> list[Problem]:
    """Read ``matryoshka.rotation.pca_source`` (when set) into ``prep.pca_texts``; the problems found.
    Not read where the rotation is off (a warning says so: listed for check, printed for run)."""
    rcfg = prep.config.matryoshka.rotation
    if rcfg.pca_source is None:
        return []
    where = "matryoshka.rotation.pca_source"
    on, why = rotation_decision(prep.config)
    if not on:
        prep.warnings.append(f"{where} is set but the rotation is off ({why}), so its texts are not used")
        if not check:
            echo(f"Warning: {prep.warnings[-1]}")
        return []
    try:
        if rcfg.pca_source.hub and not hub_ok:
            raise HubUnavailable("the hub is unreachable")
        prep.pca_texts = source_texts(rcfg.pca_source, rcfg.pca_columns, rcfg.pca_texts, where)
    except HubUnavailable as exc:
        if not check:
            return [exc.problem(where, rcfg.pca_source.describe())]
        prep.unverified.append(f"{where}: {rcfg.pca_source.describe()} not verified offline")
    except UserError as exc:
        return exc.problems
    else:
        prep.lines.append(f"PCA start texts ({where}): {len(prep.pca_texts)} distinct from "
                          f"{rcfg.pca_source.describe()}")
    return []


def reference_width_problems(role: str, where: str, width: int, embedding_dim: int | None) -> list[Problem]:
    """The teacher's embeddings are the labels and the anchor's reference is compared with the
    model's full-size embedding: both must be as wide as the model's."""
    if embedding_dim is None or width == embedding_dim:
        return []
    if role == "teacher":
        return [Problem(where, f"the teacher's embeddings have width {width} but the student's {embedding_dim}; "
                               "pick a teacher and student of the same width (MSELoss compares them directly)")]
    if role == "anchor":
        return [Problem(where, f"the reference's embedding size {width} differs from the model's {embedding_dim}")]
    return []


def dataset_problems(config: RunConfig, index: int, prepared: PreparedDataset,
                     embedding_dim: int | None) -> tuple[list[Problem], list[str]]:
    """One dataset against the model and the batch: (problems, warnings)."""
    inputs = LOSSES[config.loss_for(config.datasets[index]).name].inputs
    problems = label_width_problems(prepared, index, embedding_dim, inputs)
    problems += prompt_column_problems(config.datasets[index].prompts, [prepared.train.column_names],
                                       f"datasets.{index}.prompts")
    too_small, warnings = batch_size_problems(config, index, len(prepared.train))
    return problems + too_small, warnings


def prompt_column_problems(prompts: Any, columns: list[list[str]], where: str) -> list[Problem]:
    """A {column: prompt} mapping must name columns the training data has (after datasets[].columns
    renames them): a typo would silently train without the prompt."""
    if not isinstance(prompts, dict) or not columns:
        return []
    known = sorted({c for cols in columns for c in cols})
    return [
        Problem(where, f"no column '{column}' in the training data (columns: {', '.join(known)})"
                       f"{did_you_mean(column, known)}")
        for column in prompts if column not in known
    ]


def config_problems(config: RunConfig) -> list[Problem]:
    """Checks that need neither the model nor the data: loss arguments, batch sizes, trainer fields.
    `mtrain run` raises on these before it reads anything."""

    problems: list[Problem] = []
    t = config.training
    for i, dcfg in enumerate(config.datasets):
        lcfg = config.loss_for(dcfg)
        where = f"datasets.{i}.loss" if dcfg.loss else "loss"
        problems += [Problem(where, p) for p in kwargs_problems(lcfg)]
        spec = LOSSES[lcfg.name]
        if spec.in_batch_negatives and t.per_device_train_batch_size < 2:
            problems.append(Problem(
                "training.per_device_train_batch_size",
                f"{spec.class_name} uses in-batch negatives and needs a batch of at least 2",
            ))
        mini = lcfg.kwargs.get("mini_batch_size")
        if "mini_batch_size" in lcfg.kwargs and (not isinstance(mini, int) or isinstance(mini, bool) or mini < 1):
            problems.append(Problem(f"{where}.kwargs.mini_batch_size", "must be a whole number "
                                                                       f"of rows >= 1, got {mini!r}"))
        elif isinstance(mini, int) and mini > t.per_device_train_batch_size:
            problems.append(Problem(
                f"{where}.kwargs.mini_batch_size",
                f"mini_batch_size {mini} is larger than the batch ({t.per_device_train_batch_size}); make it smaller",
            ))
    if config.model.lora is not None and missing_peft_message():
        problems.append(Problem("model.lora", missing_peft_message()))
    m = config.matryoshka
    if m.similarity_weight > 0 and m.wrapper != "matryoshka":
        problems.append(Problem("matryoshka.similarity_weight",
                                f"works with wrapper 'matryoshka' only, not '{m.wrapper}'; set it to 0 or use "
                                "wrapper matryoshka"))
    return (problems + _training_argument_problems(config) + _best_metric_problems(config)
            + reference_problems(config) + tracker_problems(config.training.report_to) + rotation_problems(config))


def rotation_decision(config: RunConfig) -> tuple[bool, str]:
    """Whether a run adds the learned rotation (``matryoshka.rotation.enabled``), and why. ``auto``
    turns it on wherever it applies — the measured best (docs/quality.md) — and off where it does
    not: another wrapper, a dataset without the Matryoshka wrapper or with a loss against teacher
    embeddings (which an orthogonal map would turn away from), a single dim, LoRA (not measured), or
    an anchor (it pulls toward the unrotated reference)."""
    m = config.matryoshka
    if m.rotation.enabled != "auto":
        return bool(m.rotation.enabled), "set in the config"
    if m.wrapper != "matryoshka":
        return False, f"auto: off with wrapper '{m.wrapper}' (it works with 'matryoshka' only)"
    for dcfg in config.datasets:
        lcfg = config.loss_for(dcfg)
        if not lcfg.matryoshka:
            return False, f"auto: off, dataset '{dcfg.name}' trains without the Matryoshka wrapper"
        if LOSSES[lcfg.name].inputs == "embedding":
            return False, f"auto: off for {lcfg.name} (it compares with teacher embeddings)"
    if m.dims is not None and len(m.dims) < 2:
        return False, "auto: off with a single dim (nothing to order)"
    if config.model.lora is not None:
        return False, "auto: off with LoRA (not measured together)"
    if config.anchor.weight > 0:
        return False, "auto: off with an anchor (it compares with the unrotated reference model)"
    return True, ("auto: an orthogonal map keeps every full-size cosine and orders the directions for the "
                  "smaller dims; measured best in docs/quality.md")


# training.layerwise_lr_decay 'auto' with the rotation on: measured best on the realistic sets (three
# suites, two seeds), the public STS-B test, sts-details and sts-headlines (docs/quality.md, variant
# rotation-coupled-llrd0.5-small2-half; 0.8, then 0.65, the earlier values, kept less of the full size)
AUTO_LAYERWISE_DECAY = 0.5


def layerwise_decay_decision(config: RunConfig, model: Any = None) -> tuple[float | None, str]:
    """The layer-wise learning-rate decay a run uses (``training.layerwise_lr_decay``; None: one rate),
    and why. ``auto`` decays where the learned rotation is on — the two were measured together, and
    together they keep the full-size STS-B score the plain Matryoshka loss loses — and keeps one rate
    elsewhere: without the rotation (the card recipes, distillation) and for models without
    transformer layers (a static embedding). ``model`` None: not loaded yet (assumed layered)."""
    value = config.training.layerwise_lr_decay
    if value != "auto":
        return value, "set in the config" if value is not None else "one rate, set in the config"
    if not rotation_decision(config)[0]:
        return None, "auto: one rate; the decay was measured with the learned rotation, which is off here"
    if model is not None and not has_layers(model):
        return None, "auto: one rate; the model has no transformer layers"
    return AUTO_LAYERWISE_DECAY, (f"auto: with the learned rotation, each layer below the top trains at "
                                  f"{AUTO_LAYERWISE_DECAY}x the rate of the one above; keeps the full-size score, "
                                  "measured best in docs/quality.md")


# matryoshka.weights 'auto' with the rotation on: the smaller half of the dims weigh this much (measured
# best on the realistic set, two seeds, and the public STS-B test: docs/quality.md, variant
# rotation-coupled-llrd0.8-small2)
AUTO_SMALL_DIM_WEIGHT = 2.0


def dim_weights_decision(config: RunConfig, dims: list[int]) -> tuple[list[float] | None, str]:
    """The per-dim weights of the Matryoshka terms (``matryoshka.weights``; None: all 1), and why.
    ``auto`` weighs the smaller half of the dims (the middle one included) double where the learned
    rotation is on — measured together with it — and keeps them all 1 elsewhere (the card recipes,
    distillation, which were not measured with it)."""
    value = config.matryoshka.weights
    if value != "auto":
        return (list(value), "set in the config") if value is not None else (None, "all 1, set in the config")
    if not rotation_decision(config)[0]:
        return None, "auto: all 1; the weighting was measured with the learned rotation, which is off here"
    if len(dims) < 2:
        return None, "auto: all 1 with a single dim"
    weights = [1.0 if i < len(dims) // 2 else AUTO_SMALL_DIM_WEIGHT for i in range(len(dims))]
    small = [d for d, w in zip(dims, weights) if w != 1.0]
    return weights, (f"auto: with the learned rotation, the smaller half of the dims ({', '.join(map(str, small))}) "
                     f"weigh {AUTO_SMALL_DIM_WEIGHT:g}; more of the step for the dims that lose most to truncation, "
                     "measured best in docs/quality.md")


def rotation_problems(config: RunConfig) -> list[Problem]:
    """The rotation keeps full-size cosines by construction, which only helps losses that compare
    the model's embeddings with each other (not with fixed teacher vectors). ``auto`` never asks for
    it where it does not apply (:func:`rotation_decision`); these are the problems of an explicit
    ``enabled: true`` and of choices that come with it."""
    m = config.matryoshka
    on, _ = rotation_decision(config)
    if not on:
        return []
    problems = []
    if config.anchor.weight > 0:
        problems.append(Problem("matryoshka.rotation", "an anchor pulls toward the unrotated reference model, "
                                                       "which the rotation turns away from; set anchor.weight: 0 "
                                                       "or matryoshka.rotation.enabled: false"))
    if m.wrapper != "matryoshka":
        problems.append(Problem("matryoshka.rotation", f"works with wrapper 'matryoshka' only, not '{m.wrapper}'; "
                                                       "set matryoshka.wrapper: matryoshka or turn the rotation off"))
    if distributed.world_size() > 1 and m.rotation.decouple:
        # its gradient reaches the rotation outside the model's forward, which DDP's reducer refuses
        problems.append(Problem("matryoshka.rotation", "with decouple, runs on one process only for now (DDP refuses "
                                                       "a weight used outside the model's forward); set "
                                                       "matryoshka.rotation.decouple: false, or train on one GPU"))
    for i, dcfg in enumerate(config.datasets):
        lcfg = config.loss_for(dcfg)
        if LOSSES[lcfg.name].inputs == "embedding":
            where = f"datasets.{i}.loss" if dcfg.loss else "loss"
            problems.append(Problem(where, f"{lcfg.name} compares with teacher embeddings, which the rotation would "
                                           "turn away from; turn matryoshka.rotation off for distillation"))
    return problems


def reference_problems(config: RunConfig) -> list[Problem]:
    """Every evaluation.reference key must name a per-dim metric one of the config's evaluators
    produces; otherwise the published figure would never meet a figure of the run."""
    reference = config.evaluation.reference
    if reference is None:
        return []
    ev = config.evaluation
    types = {e.display_name(): e.type for e in ev.evaluators}
    dims = ev.dims or config.matryoshka.dims
    problems = []
    for key in reference.metrics:
        problem = reference_key_problem(key, types, dims)
        if problem:
            problems.append(Problem(f"evaluation.reference.metrics.{key}", problem))
    return problems


def hub_problems(config: RunConfig) -> list[Problem]:
    """Checkpoints pushed during training need the Hub when the trainer starts (it creates the repo
    then); the final push does not (a failed one is retried with `mtrain push`)."""
    if config.hub.checkpoints != "no" and not hub_reachable():
        return [Problem(
            "hub.checkpoints",
            "the Hub is unreachable, so checkpoints cannot be pushed during training; set hub.checkpoints: no "
            "and push the finished run with mtrain push OUTPUT_DIR",
        )]
    return []


# training.report_to values whose package is an extra of ours: the modules transformers' callback
# imports (any one of them will do), and the extra that installs it
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "trackio": (("trackio",), "trackio"),
}


def tracker_problems(report_to: list[str]) -> list[Problem]:
    """A tracker whose package is missing would fail at trainer construction, after the data and
    the model were loaded; say so up front, with the extra that installs it."""
    problems = []
    for name in report_to:
        if name not in TRACKERS:
            continue
        modules, extra = TRACKERS[name]
        if not any(importlib.util.find_spec(module) is not None for module in modules):
            problems.append(Problem(
                "training.report_to",
                f"{name} is not installed; pip install 'matryoshka-train[{extra}]' (or pip install {modules[0]})",
            ))
    return problems


def _best_metric_problems(config: RunConfig) -> list[Problem]:
    """training.metric_for_best_model must name a key the evaluator will produce."""

    metric = config.training.metric_for_best_model
    if metric is None:
        return []
    ev = config.evaluation
    names = [e.display_name() for e in ev.evaluators]
    problem = metric_name_problem(metric, names, ev.dims or config.matryoshka.dims, ev.dim_weights is not None)
    return [Problem("training.metric_for_best_model", problem)] if problem else []


def label_width_problems(prepared: Any, index: int, embedding_dim: int | None, inputs: str) -> list[Problem]:
    """MSE distillation: every label embedding must be as wide as the model's embeddings."""

    if inputs != "embedding" or embedding_dim is None:
        return []
    wrong = {w: rows for w, rows in label_widths(prepared.train).items() if w != embedding_dim}
    if not wrong:
        return []
    width, rows = next(iter(wrong.items()))
    return [Problem(
        f"datasets.{index}",
        f"label embeddings in {prepared.source} have width {width} ({rows_named(rows)}"
        + (f"; {sum(map(len, wrong.values())) - len(rows)} more rows have other wrong widths" if len(wrong) > 1 else "")
        + f") but the model's is {embedding_dim}; compute the labels with a teacher of width {embedding_dim}, "
        "or train a model of that width",
    )]


def batch_size_problems(config: RunConfig, index: int, rows: int) -> tuple[list[Problem], list[str]]:
    """A dataset smaller than one batch: an error when dataloader_drop_last leaves it no batch at
    all, a warning otherwise (its only batch is smaller, so in-batch losses see fewer negatives)."""
    t = config.training
    batch = t.per_device_train_batch_size * distributed.world_size()
    if rows >= batch:
        return [], []
    name = config.datasets[index].name
    if t.dataloader_drop_last:
        return [Problem(
            f"datasets.{index}",
            f"{name} has {rows} training rows, fewer than one batch ({batch}), and training.dataloader_drop_last "
            "drops that partial batch, leaving nothing to train on; add rows, lower "
            "training.per_device_train_batch_size, or set dataloader_drop_last: false",
        )], []
    return [], [f"datasets.{index} ({name}): {rows} rows is less than "
                f"one batch ({batch}); every step sees a smaller batch"]


def _training_argument_problems(config: RunConfig) -> list[Problem]:
    fields = {f.name for f in dataclasses.fields(SentenceTransformerTrainingArguments)}
    problems = []
    for key in config.training.extra:
        if key not in fields:
            hint = did_you_mean(key, sorted(fields))
            problems.append(Problem(f"training.extra.{key}", f"not a SentenceTransformerTrainingArguments field{hint}"))
    return problems


