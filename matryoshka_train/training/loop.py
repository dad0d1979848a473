"""`mtrain run` for one stage: config -> data -> model -> loss -> trainer -> evaluation -> outputs.

:func:`run_single` is a short sequence of named phases, each a function below: :func:`open_run`
(output directory, resume, processes), :func:`prepare_run` (the plan, via the one preparation path
`mtrain check` takes too; the trainer's arguments; the metrics log and carbon meter),
:func:`baseline`, :func:`train`, :func:`final_evaluation`, :func:`save` and :func:`report`. The
sentence-transformers trainer (which runs on Accelerate) does the training loop. What happens when
training fails (NaN, out of memory, full disk, Ctrl-C) is in :mod:`.faults`; checkpoints are
written whole or not at all (:mod:`.checkpoints`); secrets are kept out of every output
(:mod:`matryoshka_train.reporting.redact`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformerTrainer

from .. import testing
from ..config.loading import dump_resolved
from ..config.schema import RunConfig
from ..data.fetch import columnar_fetch
from ..data.pretokenize import PretokenizedCollator, static_embedding, token_columns
from ..errors import ConfigError, TrainingAborted
from ..losses.per_dim import fused_losses
from ..models import compiled_layers, merged_columns, packed_forward, sorted_forward
from ..models.host_reads import no_host_reads
from ..models.loading import resolve_model_path
from ..models.lora import save_trained
from ..models.provenance import BaseModel, base_model_of
from ..models.rotation import bypassed, rotation_summary
from ..reporting import progress, redact
from ..reporting.carbon import CarbonMeter
from ..reporting.card import fill_card_data, finish_front_matter
from ..reporting.report import add_model_card_section, results_table
from ..reporting.results import (
    evaluation_extras,
    padding_summary,
    quality_per_kwh,
    reference_comparison,
    train_summary,
)
from . import distributed
from .arguments import training_arguments
from .callbacks import KeepOrthogonal, MetricsLog, TrackersHeldOpen, final_figures
from .checkpoints import STAGING_PREFIX, complete_checkpoints, make_checkpoints_atomic
from .faults import (
    NanGuard,
    Preempted,
    PreemptionGuard,
    out_of_memory_tips,
    training_faults,
    weights_finite,
)
from .memory_probe import DoesNotFit, run_probe
from .plan import Plan, anchor_cost, batch_summary, build_plan, training_datasets
from .resume import check_same_run, fast_data_skip, find_checkpoint, resume_command


@dataclass
class Run:
    """One run in progress: what each phase hands to the next."""

    config: RunConfig
    out: Path
    echo: Callable[[str], None]
    main: bool
    world: int
    checkpoint: Path | None
    started: float
    plan: Plan | None = None
    train_sets: dict[str, Any] | None = None
    tokenized: dict[str, Any] | None = None
    args: Any = None
    metrics_log: MetricsLog | None = None
    meter: CarbonMeter | None = None
    before: Any = None
    grid_before: Any = None
    trainer: Any = None
    train_output: Any = None
    chunked: Any = None
    packed: Any = None  # the packed forward while it is installed, kept for its padding figures
    probed: list[Any] | None = None  # training.memory_probe: each dataset's largest batch and its peak memory
    after: Any = None
    carbon: dict[str, Any] | None = None
    trackers: TrackersHeldOpen | None = None

    def abort(self) -> None:
        """Training ended early: stop the meter, end the trackers' runs; keep secrets out of what was written."""
        self.meter.stop()
        if self.trackers is not None:
            self.trackers.close()
        if self.main:
            redact.scrub_tree(self.out)


def install_packed(plan: Plan, echo: Callable[[str], None]) -> Any:
    """The packed forward where the speed plan has it on and it can run: not for a model it cannot run
    (said, the plain forward runs), nor, when ``auto`` chose it, where attention could not run on the
    varlen kernel (an older torch, a build without flash kernels: the case no GPU run measured). The
    plan's speed record then says off, and why."""
    if not plan.speed.packed_forward:
        return None
    packed = packed_forward.install(plan.model)
    why = None
    if packed is None:
        why = packed_forward.why_not(plan.model)
        echo(f"packed_forward: not used for this model ({why}); the plain forward runs")
    elif plan.config.training.packed_forward == "auto":
        why = packed_forward.varlen_unavailable_for(plan.model, plan.precision)
        if why is not None:
            packed_forward.uninstall(plan.model, packed)
            packed = None
            echo(f"packed_forward (auto): off, {why}; the padded forward runs")
    if why is not None:
        plan.speed = plan.speed.without_packed(f"off at the start of the run: {why}")
    return packed


def run_single(
    config: RunConfig,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    resume: str | bool | None = None,
    resume_force: bool = False,
    resume_hint: str | None = None,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train a single-stage config and write the outputs; see :func:`matryoshka_train.training.run`."""
    state = open_run(config, overwrite, echo, resume, resume_force)
    prepare_run(state, overwrite)
    baseline(state)
    train(state, callbacks or [], resume_hint)
    if not state.main:
        state.meter.stop()
        state.trackers.close()
        return {}
    final_evaluation(state)
    save(state)
    return report(state)


def open_run(config: RunConfig, overwrite: bool, echo: Callable[[str], None], resume: str | bool | None,
             resume_force: bool) -> Run:
    """Join the processes; check the output directory (new run) or find the checkpoint (resume)."""
    distributed.init()
    main = distributed.is_main()
    world = distributed.world_size()
    out = Path(config.training.output_dir)
    echo = _redacting(echo) if main else (lambda _: None)
    checkpoint = None
    if resume is not None and config.model.lora is not None:
        raise ConfigError("--resume is not supported with model.lora yet (a checkpoint holds the base and adapter "
                          "weights in peft's layout); start the run again without --resume", where="model.lora")
    if resume is None:
        guard_output_dir(out, overwrite)
    else:
        checkpoint = find_checkpoint(out, resume if isinstance(resume, str) else None)
        for change in check_same_run(out, checkpoint, dump_resolved(config), world, resume_force):
            echo(f"Warning: resuming with a changed key (--resume-force): {change}")
    distributed.barrier()  # every process has checked before the main one writes anything
    return Run(config, out, echo, main, world, checkpoint, time.time())


def prepare_run(state: Run, overwrite: bool) -> None:
    """The plan and the training data (the main process first: it fills the caches), the trainer's
    arguments, config.resolved.yaml, the metrics log and the carbon meter."""
    config, out, echo = state.config, state.out, state.echo
    if not state.main:
        distributed.barrier()  # the main process reads the data (and fills the caches) first
    state.plan = build_plan(config, echo)
    # token ids are cached by the main process first
    state.train_sets, state.tokenized = training_datasets(state.plan, echo)
    if state.main:
        distributed.barrier()
    echo(batch_summary(state.plan))
    state.args = training_arguments(state.plan)
    if state.main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite and state.checkpoint is None:
            clear_previous_run(out)
        redact.write_text(out / "config.resolved.yaml", dump_resolved(config))
    state.metrics_log = MetricsLog(out / "metrics.jsonl", enabled=state.main)
    if state.checkpoint is not None:
        step = _checkpoint_step(state.checkpoint)
        echo(f"Resuming from {state.checkpoint} (step {step}); the batches already trained on are skipped")
        state.before = state.metrics_log.keep_until(
            step
        )  # a run killed after its last checkpoint logged steps beyond it
    state.meter = CarbonMeter(config.carbon, out, enabled_here=state.main)
    state.meter.start()


def baseline(state: Run) -> None:
    """The base model at every dim (main process, new runs, when evaluation.before is on)."""
    plan = state.plan
    if not (state.main and state.checkpoint is None and plan.evaluator is not None and state.config.evaluation.before):
        return
    state.echo("Evaluating the base model at every dim …")
    with bypassed(plan.rotation):  # the base model as given, not its PCA-rotated start
        plan.evaluator(plan.model)
    state.before = plan.evaluator.last_results
    state.grid_before = plan.evaluator.last_grid
    state.metrics_log.write({"event": "eval_before", "step": 0, "results": state.before})


def _rotation(plan: Plan) -> list[Any]:
    return [KeepOrthogonal(plan.rotation)] if plan.rotation is not None else []


def train(state: Run, callbacks: list[Any], resume_hint: str | None) -> None:
    """The sentence-transformers trainer over the plan; a NaN, a signal or a fault ends the run
    with one message (:class:`TrainingAborted`) after the cleanup."""
    config, plan, out = state.config, state.plan, state.out
    nan_guard = NanGuard(plan.speed.nan_check)
    preemption = PreemptionGuard()
    trainer = state.trainer = SentenceTransformerTrainer(
        model=plan.model,
        args=state.args,
        train_dataset=_one_or_dict(state.train_sets),
        eval_dataset=_eval_datasets(plan),
        loss=_one_or_dict(plan.losses),
        evaluator=plan.evaluator if config.training.eval_strategy != "no" else None,
        # test hooks before the guards (a hook's signal is seen in the same step); the NaN guard
        # before the extras: it can veto a save
        callbacks=[state.metrics_log, *testing.callbacks(), preemption, nan_guard, *_rotation(plan), *callbacks],
    )
    progress.compact_training_output(trainer)  # one bar with a postfix, not a dict per log
    nan_guard.attach(trainer)
    state.trackers = TrackersHeldOpen(trainer)  # until the final evaluation and carbon reach them
    if state.tokenized:
        columns = sorted({c for t in state.tokenized.values() for c in token_columns(t.dataset)})
        trainer.data_collator = PretokenizedCollator(
            trainer.data_collator,
            plan.model[0].tokenizer,
            columns,
            pad_to_multiple_of=plan.speed.pad_to_multiple_of,
            max_width=plan.model.max_seq_length,
            bags=static_embedding(plan.model) is not None,
        )
    make_checkpoints_atomic(trainer)
    state.chunked = (
        sorted_forward.install(
            plan.model,
            config.training.forward_chunk_tokens,
            plan.speed.forward_chunk_min_tokens,
            round_to=plan.speed.pad_to_multiple_of if plan.speed.pretokenize else None,
        )
        if plan.speed.sorted_forward
        else None
    )
    packed = state.packed = install_packed(plan, state.echo)
    compiled = compiled_layers.install(plan.model) if plan.speed.compile_layers else []
    if plan.speed.compile_layers:
        state.echo(f"compile_layers: {len(compiled)} encoder layers compiled (dynamic shapes); the first steps "
                   "include the compile time" if compiled else
                   "compile_layers: no list of transformer layers found in this model; it runs uncompiled")
    checkpoint = str(state.checkpoint) if state.checkpoint is not None else None
    try:
        with (
            training_faults(config, trainer, plan.model, out, on_abort=state.abort),
            preemption.installed(),
            fast_data_skip(),
            no_host_reads(trainer),
            merged_columns.merged() if plan.speed.merge_columns else contextlib.nullcontext(),
            columnar_fetch(plan.speed.columnar_fetch),
            fused_losses(plan.losses.values(), plan.speed.fused_loss, state.echo),
        ):
            if plan.speed.memory_probe:
                probe_memory(state, trainer)
            state.train_output = trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        sorted_forward.uninstall(plan.model, state.chunked)
        packed_forward.uninstall(plan.model, packed)
        compiled_layers.uninstall(compiled)
    if nan_guard.step is None and not weights_finite(plan.model):
        nan_guard.step, nan_guard.what = trainer.state.global_step, "the weights became NaN/inf"
    if nan_guard.step is not None:
        state.abort()
        raise TrainingAborted(nan_guard.message(out))
    if preemption.stopped_step is not None:
        state.abort()
        saved = out / f"checkpoint-{preemption.stopped_step}"
        hint = resume_hint or resume_command(None, [], state.world, distributed.local_world_size())
        raise Preempted(preemption.message(saved if saved.is_dir() else None, hint), preemption.signum or 15)
    testing.after_training(plan.model, trainer.state.global_step)


def probe_memory(state: Run, trainer: Any) -> None:
    """``training.memory_probe``: each dataset's largest batch forward and backward before step 1
    (:mod:`.memory_probe`); a batch that does not fit ends the run now, on every process."""
    failed = None
    try:
        state.probed = [p.summary() for p in run_probe(trainer, (state.chunked, state.packed), state.echo,
                                                   name=state.plan.datasets[0].name,
                                                   packed=state.packed is not None)]
    except DoesNotFit as exc:
        failed = exc.probed
    if not distributed.any_process(failed is not None):
        return
    state.abort()
    tips = out_of_memory_tips(state.config)
    if failed is None:
        raise TrainingAborted("another process's largest batch does not fit in GPU memory (training.memory_probe, "
                              f"before the first step; nothing was trained); {tips}")
    raise TrainingAborted(
        f"{failed.what()} does not fit in GPU memory: found by training.memory_probe before the first step, so "
        f"nothing was trained; {tips}"
    )


def final_evaluation(state: Run) -> None:
    """The trained model at every dim (when evaluation.after is on); the carbon meter stops here;
    both reach the trackers (``training.report_to``), which are then closed."""
    plan = state.plan
    metrics = None
    if plan.evaluator is not None and state.config.evaluation.after:
        state.echo("Evaluating the trained model at every dim …")
        metrics = plan.evaluator(plan.model)
        state.after = plan.evaluator.last_results
        state.metrics_log.write(
            {"event": "eval_after", "step": state.trainer.state.global_step, "results": state.after}
        )
    state.carbon = state.meter.stop()
    if state.world > distributed.local_world_size() and state.carbon.get("tracked"):
        state.carbon["note"] = "measured on the main process's machine only"
    state.trackers.log(final_figures(metrics, state.carbon))
    state.trackers.close()


def save(state: Run) -> None:
    """The trained model, written whole (a full disk is one message, see :mod:`.faults`), with its
    model card corrected first (:func:`fill_card`)."""
    fill_card(state)
    with training_faults(
        state.config, state.trainer, state.plan.model, state.out, stage="writing the final model", on_abort=state.abort
    ):
        save_trained(state.plan.model, state.out, resolve_model_path(state.config.model.name_or_path))


def card_base(config: RunConfig) -> BaseModel:
    """The base model the card names: ``card.base_model`` or the model trained from (a static model
    is trained from scratch: only ``card.base_model`` names one)."""
    if config.card.base_model:
        return base_model_of(config.card.base_model)
    if config.model.type == "static":
        return BaseModel(None, config.model.name_or_path)
    return base_model_of(config.model.name_or_path)


def fill_card(state: Run) -> None:
    """The card data sentence-transformers renders README.md from, corrected (see
    :mod:`matryoshka_train.reporting.card`). A card problem must not cost the trained model: it is
    logged and the model is saved with the card as it is."""
    plan, trainer = state.plan, state.trainer
    evaluator = plan.evaluator
    base = card_base(state.config)
    try:
        fill_card_data(
            plan.model.model_card_data,
            state.config,
            base.hub_id,
            base.label,
            train_sets={d.name: d.train for d in plan.datasets},
            eval_sets={d.name: d.eval for d in plan.datasets if d.eval is not None}
            if trainer is not None and trainer.eval_dataset is not None else {},
            losses=plan.losses,
            evaluators=getattr(evaluator, "evaluators", {}) if evaluator is not None else {},
            after=state.after or {},
            primary=getattr(evaluator, "primary", {}) if evaluator is not None else {},
        )
    except Exception as exc:  # noqa: BLE001 - the card is secondary: never lose the model over it
        logging.getLogger("matryoshka_train").warning("The model card could not be corrected (%s: %s); the "
                                                      "model is saved with sentence-transformers' card.",
                                                      type(exc).__name__, exc)


def report(state: Run) -> dict[str, Any]:
    """results.json, the model card section and the terminal table; returns the results."""
    plan, out, evaluator = state.plan, state.out, state.plan.evaluator
    primary = dict(evaluator.primary) if evaluator is not None else {}
    tokenized = state.tokenized or {}
    reference = state.config.evaluation.reference
    names = [spec.name for spec in evaluator.specs] if evaluator is not None else []
    results = {
        "dims": plan.dims,
        "before": state.before or {},
        "after": state.after or {},
        "primary_metric": primary,
        **evaluation_extras(evaluator, state.after is not None, state.grid_before),
        "carbon": state.carbon,
        "quality_per_kwh": quality_per_kwh(state.before, state.after, primary, state.carbon),
        "reference": reference_comparison(reference.model_dump() if reference else None, state.after, names),
        "train": train_summary(state.train_output, state.trainer),
        "anchor": anchor_cost(plan),
        "rotation": rotation_summary(plan.rotation, state.config.matryoshka.rotation, plan.rotation_why),
        "layerwise_lr_decay": {"value": plan.layerwise_decay, "why": plan.layerwise_why},
        "matryoshka_weights": {"value": plan.dim_weights, "why": plan.dim_weights_why},
        "precision": plan.precision,
        "batch_sampler": plan.batch_sampler,
        "padding": padding_summary(state.chunked or state.packed),
        "speed": plan.speed.summary(),
        "memory_probe": state.probed,
        "pretokenize": {name: {"seconds": round(t.seconds, 3), "from_cache": t.cached} for name, t in tokenized.items()}
        or None,
        "world_size": state.world,
        "resumed_from": str(state.checkpoint) if state.checkpoint is not None else None,
        "wall_time_s": round(time.time() - state.started, 2),
    }
    redact.write_text(out / "results.json", json.dumps(results, indent=2))
    add_model_card_section(out / "README.md", state.config, results)
    base = card_base(state.config)
    finish_front_matter(out / "README.md", state.config, results, base.hub_id, base.label)
    redact.scrub_tree(out)  # the model card and checkpoint files other libraries wrote
    state.echo(results_table(results))
    state.echo(f"\nModel, results.json, metrics.jsonl and model card written to {out}")
    return results


def _checkpoint_step(checkpoint: Path) -> int:
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("global_step", 0))


def clear_previous_run(out: Path) -> None:
    """--overwrite: the checkpoints and metrics of the run that was there go, so a later --resume
    can never pick up a checkpoint of the old run."""
    for path in complete_checkpoints(out):
        shutil.rmtree(path, ignore_errors=True)
    for path in out.glob(f"{STAGING_PREFIX}checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)


def _one_or_dict(by_name: dict[str, Any]) -> Any:
    """One dataset (or loss) is passed as is; several as a dict, which the trainer samples across."""
    return next(iter(by_name.values())) if len(by_name) == 1 else by_name


def _eval_datasets(plan: Plan) -> Any:
    if plan.config.training.eval_strategy == "no":
        return None
    evals = {d.name: d.eval for d in plan.datasets if d.eval is not None}
    return _one_or_dict(evals) if len(evals) == len(plan.datasets) and evals else None


def guard_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"output directory {out} already holds files; pass --resume to continue the run in it, "
            "--overwrite to replace them, or set training.output_dir to a new directory",
            where="training.output_dir",
        )


def _redacting(echo: Callable[[str], None]) -> Callable[[str], None]:
    """Everything a run prints goes through :func:`matryoshka_train.redact.redact`."""
    return lambda text: echo(redact.redact(text))
