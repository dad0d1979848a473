"""The trainer's arguments: sentence-transformers' ``SentenceTransformerTrainingArguments`` from the
training section and the plan (precision, sampler, several processes, layer-wise learning rates)."""

from __future__ import annotations

import os
from typing import Any

import torch
from sentence_transformers import SentenceTransformerTrainingArguments

from ..config.schema import HubConfig
from ..data.sampler import FastNoDuplicatesBatchSampler
from ..errors import ConfigError, Problem
from ..models.loading import layerwise_learning_rates
from ..reporting import progress
from . import distributed
from .plan import Plan, resolve_batch_sampler, resolve_precision, speed_plan, trainer_prompts
from .prepare import Preparation, layerwise_decay_decision

# `mtrain run --quiet` sets this to 0; the one switch of every bar (see reporting/progress.py)
PROGRESS_BARS = progress.PROGRESS_BARS


def progress_bars() -> bool:
    """The trainer's progress bar: on unless switched off (transformers would switch it off whenever
    its log level is above WARNING, which is how the CLI keeps library warnings quiet). Which
    process draws it is the trainer's business (the main one)."""
    return os.environ.get(PROGRESS_BARS, "1") != "0"


def training_arguments(plan: Plan) -> Any:
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
        "disable_tqdm": not progress_bars(),
        # no host read of the loss every step: our NanGuard checks it (faults.py), per training.nan_check
        "logging_nan_inf_filter": False,
        "dataloader_pin_memory": plan.speed.pin_memory,
        "dataloader_num_workers": plan.speed.dataloader_num_workers,
        "dataloader_prefetch_factor": t.dataloader_prefetch_factor,
        "prompts": trainer_prompts(plan.config),
        **({"accelerator_config": {"non_blocking": True}} if plan.speed.non_blocking else {}),
        **t.extra,
        **hub_arguments(plan.config.hub),
    }
    if distributed.world_size() > 1:
        # every process must take the same number of equal batches (DDP and gathering need it)
        kwargs["dataloader_drop_last"] = True
        if not torch.cuda.is_available():
            kwargs["use_cpu"] = True  # several CPU processes: gloo
    if plan.batch_sampler == "no_duplicates_fast":
        kwargs["batch_sampler"] = FastNoDuplicatesBatchSampler
    if plan.layerwise_decay is not None:
        kwargs["learning_rate_mapping"] = layerwise_learning_rates(plan.model, t.learning_rate, plan.layerwise_decay)
    rotation_lr = plan.config.matryoshka.rotation.learning_rate
    if plan.rotation is not None and rotation_lr is not None:
        name = next(n for n, m in plan.model.named_children() if m is plan.rotation)
        kwargs["learning_rate_mapping"] = {**kwargs.get("learning_rate_mapping", {}),
                                           rf"(^|\.){name}\.linear\.weight$": rotation_lr}
    try:
        return SentenceTransformerTrainingArguments(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the trainer rejected these arguments: {exc}", where="training") from None




def hub_arguments(hub: HubConfig) -> dict[str, Any]:
    """``hub.checkpoints`` as the trainer's own Hub push during training (its hub_strategy); the token
    is the environment's (``HF_TOKEN`` or a saved login), never an argument. The final model and card
    are pushed after the run (:mod:`matryoshka_train.reporting.publish`), not by the trainer."""
    if hub.checkpoints == "no" or hub.repo_id is None:
        return {}
    return {
        "push_to_hub": True,
        "hub_model_id": hub.repo_id,
        "hub_strategy": hub.checkpoints,
        "hub_private_repo": hub.private,
    }


def argument_problems(prep: Preparation) -> list[Problem]:
    """`mtrain check`: build the trainer's arguments as `run` will, and report the trainer's own
    refusal of them (the same message `run` stops with)."""
    config = prep.config
    decay, why = layerwise_decay_decision(config, prep.model)
    if prep.model is None and decay is not None:
        return []  # layer-wise rates need the model: not verifiable without it
    precision = resolve_precision(config.training.precision, torch.cuda.is_available(), lambda _: None)
    plan = Plan(config, prep.model, prep.dims or [], prep.datasets, {}, None, precision,
                resolve_batch_sampler(config), speed_plan(config, precision, prep.model), layerwise_decay=decay,
                layerwise_why=why)
    try:
        training_arguments(plan)
    except ConfigError as exc:
        return list(exc.problems)
    return []
