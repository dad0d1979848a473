"""The plan: what a run trains with, built from a :class:`~.prepare.Preparation` (losses per
dataset wrapped for Matryoshka and anchoring, the evaluator, precision, batch sampler), and the
batch semantics `run` and `check` print."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import set_seed

from ..config.registry import LOSSES
from ..config.schema import RunConfig
from ..data.distill_labels import attach_teacher_labels
from ..data.pretokenize import pretokenize
from ..data.sources import PreparedDataset, add_distinct_texts, string_columns
from ..errors import ConfigError, Problem, UserError
from ..evaluation.spec import build_matryoshka_evaluator
from ..losses.anchor import AnchoredLoss
from ..losses.build import build_loss
from ..models import packed_forward
from ..models.loading import freeze
from ..models.rotation import Decoupling, add_rotation, find_rotation, part_way, pca_rotation
from . import distributed
from .prepare import Preparation, dim_weights_decision, layerwise_decay_decision, prepare, rotation_decision
from .speed import SpeedPlan, decide


@dataclass
class Plan:
    """Everything built from a config before training starts (also what `mtrain check` shows)."""

    config: RunConfig
    model: Any
    dims: list[int]
    datasets: list[PreparedDataset]
    losses: dict[str, Any]
    evaluator: Any
    precision: str
    batch_sampler: str
    speed: SpeedPlan
    rotation: Any = None  # the model's rotation Dense (matryoshka.rotation), kept orthogonal by the loop
    rotation_why: str = ""  # why the run has a rotation or not (prepare.rotation_decision)
    layerwise_decay: float | None = None  # training.layerwise_lr_decay resolved (prepare.layerwise_decay_decision)
    layerwise_why: str = ""
    dim_weights: list[float] | None = None  # matryoshka.weights resolved (prepare.dim_weights_decision); None: all 1
    dim_weights_why: str = ""


def build_plan(config: RunConfig, echo: Callable[[str], None] = print) -> Plan:
    """Data, model, dims, losses and evaluator for a config, with every problem as a user error
    (found by :func:`~.prepare.prepare`, the path `mtrain check` takes too)."""
    set_seed(config.training.seed)
    prep = prepare(config, echo, before_evaluators=lambda p: _teacher_labels(p, echo))
    model, dims = prep.model, prep.dims
    if config.training.freeze_embeddings or config.training.freeze_layers:
        freeze(model, config.training.freeze_embeddings, config.training.freeze_layers)
    rotate, rotation_why = rotation_decision(config)
    rotation = start_rotation(prep, echo) if rotate else None
    decoupled = rotation if rotation is not None and config.matryoshka.rotation.decouple else None
    losses = {d.name: _loss_for(prep, i, dims, decoupled) for i, d in enumerate(prep.datasets)}
    if config.anchor.weight > 0:
        losses = anchor_losses(prep, losses)
    evaluator = build_evaluator(config, prep, dims)
    precision = resolve_precision(config.training.precision, torch.cuda.is_available(), echo)
    batch_sampler = resolve_batch_sampler(config)
    speed = speed_plan(config, precision, model)
    return Plan(config, model, dims, prep.datasets, losses, evaluator, precision, batch_sampler, speed, rotation,
                rotation_why, *layerwise_decay_decision(config, model), *dim_weights_decision(config, dims))


def start_rotation(prep: Preparation, echo: Callable[[str], None]) -> Any:
    """Give the model its orthogonal rotation (matryoshka.rotation): PCA of the base model's
    embeddings of training texts, or the identity; a model that already ends in one keeps it."""
    rcfg, model = prep.config.matryoshka.rotation, prep.model
    found = find_rotation(model)
    if found is not None:
        echo(f"Rotation: the model already has one (module {found[0]}); training it further")
        dense = found[1]
    else:
        width = prep.embedding_dim
        if rcfg.init == "pca":
            texts, whose = pca_start_texts(prep)
            with torch.no_grad():
                emb = model.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
            weight = part_way(pca_rotation(emb.float().cpu()), rcfg.pca_fraction)
            share = "" if rcfg.pca_fraction == 1 else f" ({rcfg.pca_fraction:g} of the way from no rotation)"
            echo(f"Rotation: {width}×{width}, started from the principal directions of {len(texts)} {whose}{share}")
        else:
            weight = torch.eye(width)
            echo(f"Rotation: {width}×{width}, started from the identity")
        name = add_rotation(model, weight)
        dense = getattr(model, name)
    if rcfg.decouple:
        Decoupling(dense)
    return dense


def pca_start_texts(prep: Preparation) -> tuple[list[str], str]:
    """The texts the PCA start is fit on, and what they are: the training texts, or with
    ``pca_source`` its texts plus training texts making ``pca_training_share`` of the whole."""
    rcfg = prep.config.matryoshka.rotation
    if prep.pca_texts is None:
        return _training_texts(prep.datasets, rcfg.pca_texts), "training texts"
    share, source = rcfg.pca_training_share, rcfg.pca_source.describe()
    wanted = min(rcfg.pca_texts, round(len(prep.pca_texts) * share / (1 - share)))
    own = _training_texts(prep.datasets, wanted) if wanted else []
    taken = set(own)
    texts = own + [t for t in prep.pca_texts if t not in taken]
    if not own:
        return texts, f"texts of {source}"
    return texts, f"texts: {len(own)} training texts and {len(texts) - len(own)} of {source}"


def _training_texts(datasets: list[PreparedDataset], limit: int) -> list[str]:
    """Up to ``limit`` distinct texts from the training rows' text columns, datasets in turn."""
    seen: dict[str, None] = {}
    for prepared in datasets:
        if add_distinct_texts(prepared.train, string_columns(prepared.train), limit, seen):
            break
    return list(seen)[:limit]


def _teacher_labels(prep: Preparation, echo: Callable[[str], None]) -> None:
    """Distillation only: the teacher's embeddings (cached) become the datasets' labels."""
    attach_teacher_labels(prep.config, prep.datasets, echo, model=prep.references.get("distill.teacher"))


def _loss_for(prep: Preparation, index: int, dims: list[int], rotation: Any = None) -> Any:
    config = prep.config
    lcfg = config.loss_for(config.datasets[index])
    where = f"datasets.{index}.loss" if config.datasets[index].loss else "loss"
    guide = prep.references.get(f"{where}.guide_model")
    weights, _ = dim_weights_decision(config, dims)
    mcfg = config.matryoshka.model_copy(update={"weights": weights})  # 'auto' resolved for this run
    try:
        return build_loss(prep.model, lcfg, mcfg, dims, guide=guide, rotation=rotation)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {lcfg.name}: {exc}", where=where) from None


def loss_problems(prep: Preparation) -> list[Problem]:
    """`mtrain check`: build every dataset's loss as `run` will (the constructor's own refusals,
    e.g. an unknown ``matryoshka.wrapper_kwargs`` key), and report what fails. Needs the model."""
    if prep.model is None or prep.dims is None:
        return []
    config, problems = prep.config, []
    read = {d.name for d in prep.datasets}
    for i, dcfg in enumerate(config.datasets):
        where = f"datasets.{i}.loss" if dcfg.loss else "loss"
        guide_missing = config.loss_for(dcfg).guide_model and f"{where}.guide_model" not in prep.references
        if dcfg.name not in read or guide_missing:
            continue  # not read, or its guide model was not loaded: reported (or not verifiable) already
        try:
            _loss_for(prep, i, prep.dims)
        except UserError as exc:
            problems += exc.problems
    return problems


def anchor_losses(prep: Preparation, losses: dict[str, Any]) -> dict[str, Any]:
    """Wrap every loss with the pull toward one shared, frozen reference model."""
    acfg, model = prep.config.anchor, prep.model
    reference = prep.references.get("anchor.model") or AnchoredLoss.frozen_copy_of(model)
    return {name: AnchoredLoss(model, loss, reference, acfg.weight, acfg.distance) for name, loss in losses.items()}


def build_evaluator(config: RunConfig, prep: Preparation, dims: list[int]) -> Any:
    """The per-dim evaluator over the evaluators :func:`~.prepare.prepare` resolved."""
    teachers = {ref.removesuffix(".teacher"): m for ref, m in prep.references.items() if ref.startswith("evaluation.")}
    return build_matryoshka_evaluator(
        config.evaluation, prep.evaluators.evaluators, dims, config.training.per_device_eval_batch_size, teachers
    )


def resolve_precision(asked: str, cuda: bool, echo: Callable[[str], None] = print) -> str:
    """bf16/fp16 need a GPU; on CPU we train in fp32 and say so once."""
    if not cuda:
        if asked in ("bf16", "fp16"):
            echo(f"Note: no GPU found, training in fp32 instead of {asked}.")
        return "fp32"
    if asked == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return asked


def speed_plan(config: RunConfig, precision: str | None = None, model: Any = None) -> SpeedPlan:
    """The run's speed decisions (``training/speed.py``) for this machine's device, its resolved
    precision and whether a loss embeds in mini-batches (the Cached* losses); with the ``model``, an
    automatic packed forward is off for a model it cannot run (a StaticEmbedding, say)."""
    cached = any(LOSSES[config.loss_for(d).name].gradient_cache for d in config.datasets)
    speed = decide(config.training, precision=precision, gradient_cache=cached)
    why = packed_forward.why_not(model) if model is not None and speed.packed_forward else None
    if why is not None and config.training.packed_forward == "auto":
        speed = speed.without_packed(f"auto: not for this model ({why})")
    return speed


def resolve_batch_sampler(config: RunConfig) -> str:
    """'auto' means no duplicate texts in a batch whenever a loss uses in-batch negatives
    (a duplicate would be scored as its own negative)."""
    asked = config.training.batch_sampler
    if asked != "auto":
        return asked
    in_batch = any(LOSSES[config.loss_for(d).name].in_batch_negatives for d in config.datasets)
    return "no_duplicates_fast" if in_batch else "batch_sampler"


def training_datasets(plan: Plan, echo: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training split of each dataset, with token ids added when ``training.pretokenize`` is on
    (see :mod:`matryoshka_train.data.pretokenize`). Returns ``({name: dataset}, {name: Pretokenized})``."""
    datasets = {d.name: d.train for d in plan.datasets}
    tokenized = {}
    prompted = dataset_prompts(plan.config)
    if plan.speed.pretokenize:
        for name, dataset in datasets.items():
            if prompted.get(name):
                echo(f"Note: not pre-tokenizing {name}: its prompts are added per batch by the data collator.")
                continue
            done = pretokenize(dataset, plan.model, echo, name=name)
            if done is None:
                continue
            tokenized[name] = done
            datasets[name] = done.dataset
            how = "from the cache" if done.cached else f"in {done.seconds:.1f}s"
            echo(f"Tokenized {name} once ({len(dataset)} rows, {', '.join(done.text_columns)}) {how}")
    return datasets, tokenized


def dataset_prompts(config: RunConfig) -> dict[str, str | dict[str, str] | None]:
    """Each dataset's training prompts: its own ``prompts``, else ``training.prompts`` (None: none)."""
    return {d.name: d.prompts if d.prompts is not None else config.training.prompts for d in config.datasets}


def trainer_prompts(config: RunConfig) -> str | dict[str, Any] | None:
    """``prompts`` for the trainer's arguments, in the form sentence-transformers' collator reads: the
    shared prompt(s) as they are when every dataset uses them (or there is one dataset), otherwise
    ``{dataset name: prompt or {column: prompt}}`` with an entry for every dataset ({} for none)."""
    per_dataset = dataset_prompts(config)
    values = list(per_dataset.values())
    if all(v is None for v in values):
        return None
    if len(values) == 1:
        return values[0]
    if all(v == config.training.prompts for v in values):
        return config.training.prompts
    return {name: value if value is not None else {} for name, value in per_dataset.items()}


def fmt_weights(weights: list[float] | None) -> str:
    return "all 1" if weights is None else "[" + ", ".join(f"{w:g}" for w in weights) + "]"


def batch_summary(plan: Plan) -> str:
    rows = sum(len(d.train) for d in plan.datasets)
    lines = [
        f"Model: {plan.config.model.name_or_path} · embedding size "
        f"{plan.model.get_embedding_dimension()} · dims {plan.dims}",
        f"Data: {rows} training rows in {len(plan.datasets)} dataset(s)",
        *batch_lines(plan.config, {d.name: d.columns for d in plan.datasets}, plan.precision, plan.model, plan.dims),
    ]
    return "\n".join(lines)


def batch_lines(config: RunConfig, columns: dict[str, list[str]], precision: str | None = None,
                model: Any = None, dims: list[int] | None = None) -> list[str]:
    """Batch semantics, printed by `run` and `check`: per-device batch, world size, accumulation,
    global batch, the sampler, and how many negatives each anchor is scored against (for
    in-batch-negative losses; across all devices with gather_across_devices)."""
    t = config.training
    world = distributed.world_size()
    global_batch = t.per_device_train_batch_size * world * t.gradient_accumulation_steps
    lines = [
        f"Batch: {t.per_device_train_batch_size} per device × {world} device(s) × {t.gradient_accumulation_steps} "
        f"accumulation = {global_batch} global · world size {world} · sampler {resolve_batch_sampler(config)}"
        + (f" · precision {precision}" if precision else "")
    ]
    if world > 1 and not t.dataloader_drop_last:
        lines.append("  every process takes equal full batches: the last partial batch of an epoch is dropped")
    for dcfg in config.datasets:
        cols = columns.get(dcfg.name)
        lcfg = config.loss_for(dcfg)
        if cols and LOSSES[lcfg.name].in_batch_negatives:
            kinds = "other rows' positives" + (" and hard negatives" if len(cols) > 2 else "")
            local = t.per_device_train_batch_size * (len(cols) - 1) - 1
            if lcfg.gather_across_devices and world > 1:
                total = t.per_device_train_batch_size * world * (len(cols) - 1) - 1
                lines.append(f"  {dcfg.name}: {total} negatives per anchor, gathered across {world} devices "
                             f"({local} from its own device; {kinds})")
            else:
                more = " · gather_across_devices on: more with several devices" if lcfg.gather_across_devices else ""
                lines.append(f"  {dcfg.name}: {local} negatives per anchor ({kinds}){more}")
    on, why = rotation_decision(config)
    decay, decay_why = layerwise_decay_decision(config, model)
    weights, weights_why = dim_weights_decision(config, dims) if dims else (None, "")
    return [
        *lines,
        f"Rotation (matryoshka.rotation): {'on' if on else 'off'} ({why})" + (start_line(config) if on else ""),
        f"Layer-wise LR decay (training.layerwise_lr_decay): {decay if decay is not None else 'off'} ({decay_why})",
        *([f"Dim weights (matryoshka.weights): {fmt_weights(weights)} ({weights_why})"] if weights_why else []),
        *speed_plan(config, model=model).lines(),
        SpeedPlan.sampler_line(t.batch_sampler, resolve_batch_sampler(config)),
    ]


def start_line(config: RunConfig) -> str:
    """How the rotation starts, as the check line's tail."""
    rcfg = config.matryoshka.rotation
    if rcfg.init != "pca":
        return "; starts from no rotation"
    whose = "training texts"
    if rcfg.pca_source is not None:
        whose = f"the texts of {rcfg.pca_source.describe()}" + (
            f" with training texts ({rcfg.pca_training_share:g} of the whole)" if rcfg.pca_training_share else "")
    if rcfg.pca_fraction == 1:
        return f"; starts from the PCA rotation of {whose}"
    return f"; starts {rcfg.pca_fraction:g} of the way from no rotation to the PCA rotation of {whose}"


def anchor_cost(plan: Plan) -> dict[str, Any] | None:
    anchored = [loss for loss in plan.losses.values() if isinstance(loss, AnchoredLoss)]
    if not anchored:
        return None
    seconds = sum(loss.reference_seconds for loss in anchored)
    steps = sum(loss.calls for loss in anchored)
    return {
        "weight": plan.config.anchor.weight,
        "distance": plan.config.anchor.distance,
        "reference_forward_s_total": round(seconds, 3),
        "reference_forward_s_per_step": round(seconds / steps, 4) if steps else 0.0,
    }
