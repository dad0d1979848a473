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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import distributed, redact, sorted_forward
from .carbon import CarbonMeter
from .checkpoints import make_checkpoints_atomic
from .config import RunConfig, dump_resolved
from .data import HubUnavailable, PreparedDataset, prepare_dataset
from .errors import ConfigError, DataError, Problem, TrainingAborted, UserError
from .faults import (
    NanGuard,
    Preempted,
    PreemptionGuard,
    training_faults,
    weights_finite,
)
from .host_reads import no_host_reads
from .losses import LOSSES, build_loss
from .pretokenize import PretokenizedCollator, pretokenize, token_columns
from .resume import check_same_run, fast_data_skip, find_checkpoint, resume_command
from .speed import SpeedPlan, decide

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
    speed: SpeedPlan


def run(
    config: RunConfig,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    resume: str | bool | None = None,
    resume_force: bool = False,
    resume_hint: str | None = None,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train as the config says and write the outputs. Returns the content of results.json (an
    empty dict on the processes other than the main one).

    ``resume``: None starts a new run; True (or "") continues from the newest complete checkpoint in
    training.output_dir; a path continues from that checkpoint. ``resume_hint`` is the command an
    interrupted run prints to be resumed (the CLI fills in the config path and overrides).
    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (for programmatic use, e.g.
    the training benchmark's step timer).
    """
    from sentence_transformers import SentenceTransformerTrainer

    if config.stages:  # a multi-stage config runs this function once per stage
        from .stages import run_stages

        if resume is not None:
            raise ConfigError(
                "--resume is not supported for multi-stage configs; resume a stage with a single-stage config "
                "starting from the previous stage's model",
                where="--resume",
            )
        return run_stages(config, overwrite, echo)

    distributed.init()
    main = distributed.is_main()
    world = distributed.world_size()
    out = Path(config.training.output_dir)
    echo = _redacting(echo) if main else (lambda _: None)
    resolved = dump_resolved(config)
    checkpoint = None
    if resume is None:
        guard_output_dir(out, overwrite)
    else:
        checkpoint = find_checkpoint(out, resume if isinstance(resume, str) else None)
        for change in check_same_run(out, checkpoint, resolved, world, resume_force):
            echo(f"Warning: resuming with a changed key (--resume-force): {change}")
    distributed.barrier()  # every process has checked before the main one writes anything
    started = time.time()
    if not main:
        distributed.barrier()  # the main process reads the data (and fills the caches) first
    plan = build_plan(config, echo)
    train_sets, tokenized = training_datasets(plan, echo)  # token ids cached by the main process first
    if main:
        distributed.barrier()
    echo(batch_summary(plan))
    args = training_arguments(plan)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite and checkpoint is None:
            clear_previous_run(out)
        redact.write_text(out / "config.resolved.yaml", resolved)
    metrics_log = MetricsLog(out / "metrics.jsonl", enabled=main)

    before = grid_before = None
    if checkpoint is not None:
        step = _checkpoint_step(checkpoint)
        echo(f"Resuming from {checkpoint} (step {step}); the batches already trained on are skipped")
        before = metrics_log.keep_until(step)  # a run killed after its last checkpoint logged steps beyond it

    meter = CarbonMeter(config.carbon, out, enabled_here=main)
    meter.start()

    if main and checkpoint is None and plan.evaluator is not None and config.evaluation.before:
        echo("Evaluating the base model at every dim …")
        plan.evaluator(plan.model)
        before = plan.evaluator.last_results
        grid_before = plan.evaluator.last_grid
        metrics_log.write({"event": "eval_before", "step": 0, "results": before})

    nan_guard = NanGuard(plan.speed.nan_check)
    preemption = PreemptionGuard()
    trainer = SentenceTransformerTrainer(
        model=plan.model,
        args=args,
        train_dataset=_one_or_dict(train_sets),
        eval_dataset=_eval_datasets(plan),
        loss=_one_or_dict(plan.losses),
        evaluator=plan.evaluator if config.training.eval_strategy != "no" else None,
        callbacks=[metrics_log, preemption, nan_guard, *(callbacks or [])],  # the NaN guard before extras: it can veto a save
    )
    nan_guard.attach(trainer)
    if tokenized:
        trainer.data_collator = PretokenizedCollator(
            trainer.data_collator, plan.model[0].tokenizer,
            sorted({c for t in tokenized.values() for c in token_columns(t.dataset)}),
            pad_to_multiple_of=plan.speed.pad_to_multiple_of, max_width=plan.model.max_seq_length,
        )
    make_checkpoints_atomic(trainer)

    def on_abort() -> None:
        meter.stop()
        if main:
            redact.scrub_tree(out)

    chunked = sorted_forward.install(plan.model, config.training.forward_chunk_tokens,
                                     plan.speed.forward_chunk_min_tokens) if plan.speed.sorted_forward else None
    try:
        with training_faults(config, trainer, plan.model, out, on_abort=on_abort), preemption.installed(), \
                fast_data_skip(), no_host_reads(trainer):
            train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    finally:
        sorted_forward.uninstall(plan.model, chunked)
    if nan_guard.step is None and not weights_finite(plan.model):
        nan_guard.step, nan_guard.what = trainer.state.global_step, "the weights became NaN/inf"
    if nan_guard.step is not None:
        on_abort()
        raise TrainingAborted(nan_guard.message(out))
    if preemption.stopped_step is not None:
        on_abort()
        saved = out / f"checkpoint-{preemption.stopped_step}"
        hint = resume_hint or resume_command(None, [], world, distributed.local_world_size())
        raise Preempted(preemption.message(saved if saved.is_dir() else None, hint), preemption.signum or 15)
    distributed.write_weight_digest(plan.model, trainer.state.global_step)  # test hook (docs/distributed.md)
    if not main:
        meter.stop()
        return {}

    after = None
    if plan.evaluator is not None and config.evaluation.after:
        echo("Evaluating the trained model at every dim …")
        plan.evaluator(plan.model)
        after = plan.evaluator.last_results
        metrics_log.write({"event": "eval_after", "step": trainer.state.global_step, "results": after})
    carbon = meter.stop()
    if world > distributed.local_world_size() and carbon.get("tracked"):
        carbon["note"] = "measured on the main process's machine only"

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
        "speed": plan.speed.summary(),
        "pretokenize": {name: {"seconds": round(t.seconds, 3), "from_cache": t.cached} for name, t in tokenized.items()} or None,
        "world_size": world,
        "resumed_from": str(checkpoint) if checkpoint is not None else None,
        "wall_time_s": round(time.time() - started, 2),
    }
    redact.write_text(out / "results.json", json.dumps(results, indent=2))
    from .report import add_model_card_section, results_table

    add_model_card_section(out / "README.md", config, results)
    redact.scrub_tree(out)  # the model card and checkpoint files other libraries wrote
    echo(results_table(results))
    echo(f"\nModel, results.json, metrics.jsonl and model card written to {out}")
    return results


def _checkpoint_step(checkpoint: Path) -> int:
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("global_step", 0))


def clear_previous_run(out: Path) -> None:
    """--overwrite: the checkpoints and metrics of the run that was there go, so a later --resume
    can never pick up a checkpoint of the old run."""
    import shutil

    from .checkpoints import STAGING_PREFIX, complete_checkpoints

    for path in complete_checkpoints(out):
        shutil.rmtree(path, ignore_errors=True)
    for path in out.glob(f"{STAGING_PREFIX}checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)


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
    return Plan(config, model, dims, datasets, losses, evaluator, precision, resolve_batch_sampler(config),
                decide(config.training))


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
        **({} if t.optim == "auto" else {"optim": t.optim}),
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
        # no host read of the loss every step: our NanGuard checks it (faults.py), per training.nan_check
        "logging_nan_inf_filter": False,
        "dataloader_pin_memory": plan.speed.pin_memory,
        "dataloader_num_workers": plan.speed.dataloader_num_workers,
        "dataloader_prefetch_factor": t.dataloader_prefetch_factor,
        **({"accelerator_config": {"non_blocking": True}} if plan.speed.non_blocking else {}),
        **t.extra,
    }
    if distributed.world_size() > 1:
        # every process must take the same number of equal batches (DDP and gathering need it)
        kwargs["dataloader_drop_last"] = True
        if not torch.cuda.is_available():
            kwargs["use_cpu"] = True  # several CPU processes: gloo
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
    if plan.speed.pretokenize:
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
                lines.append(f"  {dcfg.name}: {local} negatives per anchor ({kinds})"
                             + (" · gather_across_devices on: more with several devices" if lcfg.gather_across_devices else ""))
    return [*lines, *decide(t).lines(), SpeedPlan.sampler_line(t.batch_sampler, resolve_batch_sampler(config))]


def guard_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"output directory {out} already holds files; pass --resume to continue the run in it, "
            "--overwrite to replace them, or set training.output_dir to a new directory",
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
        "forwards_without_host_lengths": forward.uncarried,
    }


def _train_summary(train_output: Any, trainer: Any) -> dict[str, Any]:
    metrics = train_output.metrics
    runtime = float(metrics.get("train_runtime", 0.0))
    per_second = float(metrics.get("train_samples_per_second", 0.0))
    return {
        "steps": int(trainer.state.global_step),
        "samples": round(per_second * runtime),
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

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(redact.redact(json.dumps(record)) + "\n")

    def keep_until(self, step: int) -> dict[str, Any] | None:
        """On resume: drop the records of steps after the checkpoint (they will be logged again) and
        return the baseline evaluation's results, if the run logged one."""
        if not self.path.is_file():
            return None
        kept, before = [], None
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if record.get("event") == "eval_before":
                before = record.get("results")
            if record.get("event") == "eval_before" or int(record.get("step", 0)) <= step:
                kept.append(line)
        if self.enabled:
            redact.write_text(self.path, "".join(line + "\n" for line in kept))
        return before

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        event = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        self.write({"event": event, "step": state.global_step, "epoch": state.epoch, **logs})


def _redacting(echo: Callable[[str], None]) -> Callable[[str], None]:
    """Everything a run prints goes through :func:`matryoshka_train.redact.redact`."""
    return lambda text: echo(redact.redact(text))


# NanGuard now lives in matryoshka_train.faults; it stays importable from here for existing callers.
