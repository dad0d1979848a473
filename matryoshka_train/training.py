"""`mtrain run`: config -> data -> model -> loss -> trainer -> evaluation -> outputs.

:func:`run` reads top to bottom as the whole training path. The sentence-transformers trainer
(which runs on Accelerate) does the training loop; we add the per-dim evaluation before and
after, the metrics log, the NaN guard, the carbon meter, and the outputs. What happens when
training fails (NaN, out of memory, full disk, Ctrl-C) is in :mod:`matryoshka_train.faults`;
checkpoints are written whole or not at all (:mod:`matryoshka_train.checkpoints`); secrets are
kept out of every output (:mod:`matryoshka_train.redact`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import redact, sorted_forward
from .carbon import CarbonMeter
from .checkpoints import make_checkpoints_atomic
from .config import RunConfig, dump_resolved
from .data import HubUnavailable, PreparedDataset, prepare_dataset
from .errors import ConfigError, DataError, Problem, TrainingAborted, UserError
from .faults import NanGuard, training_faults, weights_finite
from .losses import LOSSES, build_loss
from .pretokenize import PretokenizedCollator, pretokenize, token_columns

log = logging.getLogger("matryoshka_train")


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


def run(config: RunConfig, overwrite: bool = False, echo: Callable[[str], None] = print,
        callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Train as the config says and write the outputs. Returns the content of results.json.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (for programmatic use, e.g.
    the training benchmark's step timer)."""
    from sentence_transformers import SentenceTransformerTrainer

    if config.stages:  # a multi-stage config runs this function once per stage
        from .stages import run_stages

        return run_stages(config, overwrite, echo)

    out = Path(config.training.output_dir)
    guard_output_dir(out, overwrite)
    echo = _redacting(echo)
    started = time.time()
    plan = build_plan(config, echo)
    echo(batch_summary(plan))
    out.mkdir(parents=True, exist_ok=True)
    redact.write_text(out / "config.resolved.yaml", dump_resolved(config))
    metrics_log = MetricsLog(out / "metrics.jsonl")

    meter = CarbonMeter(config.carbon, out)
    meter.start()

    before = grid_before = None
    if plan.evaluator is not None and config.evaluation.before:
        echo("Evaluating the base model at every dim …")
        plan.evaluator(plan.model)
        before = plan.evaluator.last_results
        grid_before = plan.evaluator.last_grid
        metrics_log.write({"event": "eval_before", "step": 0, "results": before})

    train_sets, tokenized = training_datasets(plan, echo)
    nan_guard = NanGuard()
    trainer = SentenceTransformerTrainer(
        model=plan.model,
        args=training_arguments(plan),
        train_dataset=_one_or_dict(train_sets),
        eval_dataset=_eval_datasets(plan),
        loss=_one_or_dict(plan.losses),
        evaluator=plan.evaluator if config.training.eval_strategy != "no" else None,
        callbacks=[metrics_log, nan_guard, *(callbacks or [])],
    )
    nan_guard.attach(trainer)
    if tokenized:
        trainer.data_collator = PretokenizedCollator(trainer.data_collator, plan.model[0].tokenizer,
                                                     sorted({c for t in tokenized.values() for c in token_columns(t.dataset)}))
    make_checkpoints_atomic(trainer)

    def on_abort() -> None:
        meter.stop()
        redact.scrub_tree(out)

    chunked = sorted_forward.install(plan.model, config.training.forward_chunk_tokens) \
        if config.training.sorted_forward else None
    try:
        with training_faults(config, trainer, plan.model, out, on_abort=on_abort):
            train_output = trainer.train()
    finally:
        sorted_forward.uninstall(plan.model, chunked)
    if nan_guard.step is None and not weights_finite(plan.model):
        nan_guard.step, nan_guard.what = trainer.state.global_step, "the weights became NaN/inf"
    if nan_guard.step is not None:
        on_abort()
        raise TrainingAborted(nan_guard.message(out))

    after = None
    if plan.evaluator is not None and config.evaluation.after:
        echo("Evaluating the trained model at every dim …")
        plan.evaluator(plan.model)
        after = plan.evaluator.last_results
        metrics_log.write({"event": "eval_after", "step": trainer.state.global_step, "results": after})
    carbon = meter.stop()

    with training_faults(config, trainer, plan.model, out, stage="writing the final model", on_abort=on_abort):
        plan.model.save(str(out))
    results = {
        "dims": plan.dims,
        "before": before or {},
        "after": after or {},
        "primary_metric": dict(plan.evaluator.primary) if plan.evaluator is not None else {},
        **evaluation_extras(plan.evaluator, after is not None, grid_before),
        "carbon": carbon,
        "quality_per_kwh": quality_per_kwh(before, after, dict(plan.evaluator.primary) if plan.evaluator else {}, carbon),
        "train": _train_summary(train_output, trainer),
        "anchor": _anchor_cost(plan),
        "precision": plan.precision,
        "batch_sampler": plan.batch_sampler,
        "padding": padding_summary(chunked),
        "pretokenize": {name: {"seconds": round(t.seconds, 3), "from_cache": t.cached} for name, t in tokenized.items()} or None,
        "wall_time_s": round(time.time() - started, 2),
    }
    redact.write_text(out / "results.json", json.dumps(results, indent=2))
    from .report import add_model_card_section, results_table

    add_model_card_section(out / "README.md", config, results)
    redact.scrub_tree(out)  # the model card and checkpoint files other libraries wrote
    echo(results_table(results))
    echo(f"\nModel, results.json, metrics.jsonl and model card written to {out}")
    return results


# --------------------------------------------------------------------------------------------
# building the plan


def build_plan(config: RunConfig, echo: Callable[[str], None] = print) -> Plan:
    """Data, model, dims, losses and evaluator for a config, with every problem as a user error."""
    import torch
    from transformers import set_seed

    from .check import batch_size_problems, config_problems, label_width_problems
    from .distill import attach_teacher_labels, takes_teacher_labels
    from .models import freeze, load_model, resolve_dims

    problems = config_problems(config)
    if problems:
        raise ConfigError(problems)
    set_seed(config.training.seed)
    datasets = []
    for i, dcfg in enumerate(config.datasets):
        try:
            datasets.append(prepare_dataset(dcfg, i, config.training.seed, config.loss_for(dcfg).name,
                                            labels_from_teacher=takes_teacher_labels(config, dcfg)))
        except HubUnavailable as exc:
            problems.append(Problem(
                f"datasets.{i}.source",
                f"cannot reach the hub for {dcfg.source.describe()} ({exc}); use local files or go online",
            ))
        except UserError as exc:  # every dataset is read, so all their problems are reported at once
            problems += exc.problems
    if problems:
        raise DataError(problems)
    attach_teacher_labels(config, datasets, echo)  # distillation only: cached teacher embeddings
    model = load_model(config.model)
    dims = resolve_dims(config.matryoshka, model.get_embedding_dimension())
    for i, (dcfg, prepared) in enumerate(zip(config.datasets, datasets)):
        inputs = LOSSES[config.loss_for(dcfg).name].inputs
        problems += label_width_problems(prepared, i, model.get_embedding_dimension(), inputs)
        too_small, warnings = batch_size_problems(config, i, len(prepared.train))
        problems += too_small
        for warning in warnings:
            echo(f"Warning: {warning}")
    if problems:
        raise DataError(problems)
    if config.training.freeze_embeddings or config.training.freeze_layers:
        freeze(model, config.training.freeze_embeddings, config.training.freeze_layers)
    losses = {d.name: _loss_for(config, i, model, dims) for i, d in enumerate(datasets)}
    if config.anchor.weight > 0:
        losses = anchor_losses(config, model, losses)
    evaluator = build_evaluator(config, datasets, dims)
    precision = resolve_precision(config.training.precision, torch.cuda.is_available(), echo)
    return Plan(config, model, dims, datasets, losses, evaluator, precision, resolve_batch_sampler(config))


def _loss_for(config: RunConfig, index: int, model: Any, dims: list[int]) -> Any:
    from .models import load_model

    lcfg = config.loss_for(config.datasets[index])
    where = f"datasets.{index}.loss" if config.datasets[index].loss else "loss"
    guide = None
    if lcfg.guide_model:
        guide = load_model(config.model.model_copy(update={"name_or_path": lcfg.guide_model, "type": "pretrained", "layers": None}))
    try:
        return build_loss(model, lcfg, config.matryoshka, dims, guide=guide)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {lcfg.name}: {exc}", where=where) from None


def anchor_losses(config: RunConfig, model: Any, losses: dict[str, Any]) -> dict[str, Any]:
    """Wrap every loss with the pull toward one shared, frozen reference model."""
    from .anchor import AnchoredLoss
    from .models import load_model

    acfg = config.anchor
    if acfg.model is None:
        reference = AnchoredLoss.frozen_copy_of(model)
    else:
        reference = load_model(config.model.model_copy(update={"name_or_path": acfg.model, "type": "pretrained"}))
        if reference.get_embedding_dimension() != model.get_embedding_dimension():
            raise ConfigError(
                f"the reference's embedding size {reference.get_embedding_dimension()} differs from the model's "
                f"{model.get_embedding_dimension()}", where="anchor.model",
            )
    return {name: AnchoredLoss(model, loss, reference, acfg.weight, acfg.distance) for name, loss in losses.items()}


def build_evaluator(config: RunConfig, datasets: list[PreparedDataset], dims: list[int]) -> Any:
    from .evaluation import build_matryoshka_evaluator
    from .models import load_model

    def teacher(name: str) -> Any:
        return load_model(config.model.model_copy(update={"name_or_path": name, "type": "pretrained", "layers": None}))

    eval_rows = {d.name: d.eval for d in datasets}
    return build_matryoshka_evaluator(
        config.evaluation, eval_rows, dims, config.training.per_device_eval_batch_size, teacher
    )


def resolve_precision(asked: str, cuda: bool, echo: Callable[[str], None] = print) -> str:
    """bf16/fp16 need a GPU; on CPU we train in fp32 and say so once."""
    import torch

    if not cuda:
        if asked in ("bf16", "fp16"):
            echo(f"Note: no GPU found, training in fp32 instead of {asked}.")
        return "fp32"
    if asked == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return asked


def resolve_batch_sampler(config: RunConfig) -> str:
    """'auto' means no duplicate texts in a batch whenever a loss uses in-batch negatives
    (a duplicate would be scored as its own negative)."""
    asked = config.training.batch_sampler
    if asked != "auto":
        return asked
    in_batch = any(LOSSES[config.loss_for(d).name].in_batch_negatives for d in config.datasets)
    return "no_duplicates_fast" if in_batch else "batch_sampler"


def training_arguments(plan: Plan) -> Any:
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments

    t = plan.config.training
    kwargs: dict[str, Any] = {
        "output_dir": t.output_dir,
        "num_train_epochs": t.num_train_epochs,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.per_device_eval_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler_type,
        "warmup_steps": float(t.warmup_ratio) if t.warmup_ratio > 0 else 0,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "optim": t.optim,
        "bf16": plan.precision == "bf16",
        "fp16": plan.precision == "fp16",
        "batch_sampler": plan.batch_sampler,
        "multi_dataset_batch_sampler": t.multi_dataset_batch_sampler,
        "dataloader_drop_last": t.dataloader_drop_last,
        "seed": t.seed,
        "logging_steps": t.logging_steps,
        "eval_strategy": t.eval_strategy,
        "eval_steps": t.eval_steps,
        "save_strategy": t.save_strategy,
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "save_only_model": t.save_only_model,
        "load_best_model_at_end": t.load_best_model_at_end,
        "metric_for_best_model": t.metric_for_best_model,
        "report_to": t.report_to,
        "dataloader_pin_memory": torch.cuda.is_available(),
        **t.extra,
    }
    if plan.batch_sampler == "no_duplicates_fast":
        from .sampler import FastNoDuplicatesBatchSampler

        kwargs["batch_sampler"] = FastNoDuplicatesBatchSampler
    if t.layerwise_lr_decay is not None:
        from .models import layerwise_learning_rates

        kwargs["learning_rate_mapping"] = layerwise_learning_rates(plan.model, t.learning_rate, t.layerwise_lr_decay)
    try:
        return SentenceTransformerTrainingArguments(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the trainer rejected these arguments: {exc}", where="training") from None


def training_datasets(plan: Plan, echo: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training split of each dataset, with token ids added when ``training.pretokenize`` is on
    (see :mod:`matryoshka_train.pretokenize`). Returns ``({name: dataset}, {name: Pretokenized})``."""
    datasets = {d.name: d.train for d in plan.datasets}
    tokenized = {}
    if plan.config.training.pretokenize:
        for name, dataset in datasets.items():
            done = pretokenize(dataset, plan.model, echo)
            if done is None:
                continue
            tokenized[name] = done
            datasets[name] = done.dataset
            how = "from the cache" if done.cached else f"in {done.seconds:.1f}s"
            echo(f"Tokenized {name} once ({len(dataset)} rows, {', '.join(done.text_columns)}) {how}")
    return datasets, tokenized


def _one_or_dict(by_name: dict[str, Any]) -> Any:
    """One dataset (or loss) is passed as is; several as a dict, which the trainer samples across."""
    return next(iter(by_name.values())) if len(by_name) == 1 else by_name


def _eval_datasets(plan: Plan) -> Any:
    if plan.config.training.eval_strategy == "no":
        return None
    evals = {d.name: d.eval for d in plan.datasets if d.eval is not None}
    return _one_or_dict(evals) if len(evals) == len(plan.datasets) and evals else None


def batch_summary(plan: Plan) -> str:
    rows = sum(len(d.train) for d in plan.datasets)
    lines = [
        f"Model: {plan.config.model.name_or_path} · embedding size {plan.model.get_embedding_dimension()} · dims {plan.dims}",
        f"Data: {rows} training rows in {len(plan.datasets)} dataset(s)",
        *batch_lines(plan.config, {d.name: d.columns for d in plan.datasets}, plan.precision),
    ]
    return "\n".join(lines)


def batch_lines(config: RunConfig, columns: dict[str, list[str]], precision: str | None = None) -> list[str]:
    """Batch semantics, printed by `run` and `check`: per-device and global batch, the sampler, and
    how many negatives each anchor is scored against (for in-batch-negative losses)."""
    t = config.training
    world = int(os.environ.get("WORLD_SIZE", "1"))
    global_batch = t.per_device_train_batch_size * world * t.gradient_accumulation_steps
    lines = [
        f"Batch: {t.per_device_train_batch_size} per device × {world} device(s) × {t.gradient_accumulation_steps} "
        f"accumulation = {global_batch} global · sampler {resolve_batch_sampler(config)}"
        + (f" · precision {precision}" if precision else "")
    ]
    for dcfg in config.datasets:
        cols = columns.get(dcfg.name)
        if cols and LOSSES[config.loss_for(dcfg).name].in_batch_negatives:
            per_anchor = t.per_device_train_batch_size * (len(cols) - 1) - 1
            kinds = "other rows' positives" + (" and hard negatives" if len(cols) > 2 else "")
            lines.append(f"  {dcfg.name}: {per_anchor} negatives per anchor ({kinds})")
    return lines


def guard_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"output directory {out} already holds files; pass --overwrite to replace them, "
            "or set training.output_dir to a new directory",
            where="training.output_dir",
        )


def _anchor_cost(plan: Plan) -> dict[str, Any] | None:
    from .anchor import AnchoredLoss

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


def evaluation_extras(evaluator: Any, evaluated_after: bool, grid_before: Any) -> dict[str, Any]:
    """The dim × precision grid and the over-dims aggregates for results.json (after training;
    the grid before training too, when precisions beyond float32 are configured)."""
    if evaluator is None or not evaluated_after:
        return {}
    extras: dict[str, Any] = {"grid": evaluator.last_grid, "aggregates": evaluator.last_aggregates}
    if len(evaluator.precisions) > 1 and grid_before:
        extras["grid_before"] = grid_before
    return extras


def quality_per_kwh(before: Any, after: Any, primary: dict[str, str], carbon: dict[str, Any]) -> dict[str, Any] | None:
    """Each evaluator's primary metric at the full dim per kWh of the whole run, and the gain over
    the base model per kWh (only when codecarbon measured energy)."""
    energy = carbon.get("energy_kwh") if carbon.get("tracked") else None
    if not energy or not after:
        return None
    out: dict[str, Any] = {"energy_kwh": energy}
    for name, metric in primary.items():
        per_dim = after.get(name, {})
        if not per_dim:
            continue
        dim = max(per_dim, key=int)
        value = per_dim[dim].get(metric)
        base = (before or {}).get(name, {}).get(dim, {}).get(metric)
        out[name] = {
            "metric": metric, "dim": int(dim), "value": value,
            "per_kwh": value / energy if value is not None else None,
            "gain_per_kwh": (value - base) / energy if value is not None and base is not None else None,
        }
    return out


def padding_summary(forward: Any) -> dict[str, Any] | None:
    """How much of the training forward compute was padding, with and without the sorted forward."""
    if forward is None or not forward.padded_tokens:
        return None
    return {
        "real_tokens": forward.real_tokens,
        "padded_tokens_plain": forward.padded_tokens,
        "padded_tokens_run": forward.run_tokens,
        "pad_share_plain": round(1 - forward.real_tokens / forward.padded_tokens, 4),
        "pad_share_run": round(1 - forward.real_tokens / forward.run_tokens, 4),
    }


def _train_summary(train_output: Any, trainer: Any) -> dict[str, Any]:
    metrics = train_output.metrics
    runtime = float(metrics.get("train_runtime", 0.0))
    per_second = float(metrics.get("train_samples_per_second", 0.0))
    return {
        "steps": int(trainer.state.global_step),
        "samples": int(round(per_second * runtime)),
        "runtime_s": round(runtime, 3),
        "samples_per_second": round(per_second, 3),
        "final_loss": _last_loss(trainer),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
    }


def _last_loss(trainer: Any) -> float | None:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return float(losses[-1]) if losses else None


# --------------------------------------------------------------------------------------------
# callbacks


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class MetricsLog(_callback_base()):
    """Appends one JSON object per log or evaluation event to metrics.jsonl (main process only)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(redact.redact(json.dumps(record)) + "\n")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        event = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        self.write({"event": event, "step": state.global_step, "epoch": state.epoch, **logs})


def _redacting(echo: Callable[[str], None]) -> Callable[[str], None]:
    """Everything a run prints goes through :func:`matryoshka_train.redact.redact`."""
    return lambda text: echo(redact.redact(text))


# NanGuard now lives in matryoshka_train.faults; it stays importable from here for existing callers.
