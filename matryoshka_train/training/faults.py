"""What happens when training goes wrong: NaN/inf losses, running out of GPU memory, a full disk,
Ctrl-C, preemption. Each ends the run with one message that says what happened, what was kept, and
what to do.

- :class:`NanGuard` looks at the loss of *every* step (the trainer's own log replaces a NaN by the
  running mean, so a guard on logged losses never sees one). On a NaN/inf loss it throws that
  step's gradients away, so the weights stay those of the last good step, cancels any save, and
  stops. Before each checkpoint it also checks the weights are finite.
- :class:`PreemptionGuard` catches SIGINT (Ctrl-C) and SIGTERM (what schedulers send before they
  preempt) during training: the current step finishes, a resumable ``checkpoint-<step>`` is written
  through the atomic path, and the run exits with 128 + the signal number and the exact command
  that resumes it. Under several processes the decision to stop is shared (any process signalled
  stops them all at the same step), so they all save the same checkpoint.
- :func:`training_faults` wraps ``trainer.train()`` (and the final save) and turns
  ``KeyboardInterrupt`` (a second Ctrl-C), ``torch.OutOfMemoryError`` and disk-full ``OSError``
  into :class:`~matryoshka_train.errors.TrainingAborted` with the advice for that fault.
"""

from __future__ import annotations

import contextlib
import errno
import math
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from ..config.registry import LOSSES
from ..errors import TrainingAborted
from . import distributed
from .checkpoints import last_checkpoint, save_model_atomically

if TYPE_CHECKING:  # pragma: no cover
    from ..config.schema import RunConfig

WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # disk full, over quota, read-only, too big


def weights_finite(model: Any) -> bool:
    """True when no parameter holds a NaN or an infinity (one host read for all of them).

    One L1 norm over all of them, by torch's foreach kernels (a handful of operations, where a check
    per parameter made two each: ~400 for a BERT-base, on every save step): a NaN or an infinity
    anywhere makes the sum NaN or infinite, and finite weights cannot sum past float range."""

    params = [p.detach() for p in model.parameters() if p.is_floating_point()]
    if not params:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(params, norm_type=1.0)))


class NanGuard(TrainerCallback):
    """Stops training at the first step whose loss is NaN/inf.

    :meth:`attach` wraps the trainer's ``training_step`` (this trainer instance only). How it reads
    the loss depends on ``mode`` (``training.nan_check``, resolved per device in
    :mod:`matryoshka_train.training.speed`):

    * ``every_step``: the loss is read on the host after every micro-batch. When it is not finite,
      the gradients are dropped (set to None, so the optimizer step that follows leaves every weight
      as it was) and training stops at the end of the step. Free on a CPU; on a GPU each read waits
      for the device queue to drain.
    * ``logging_steps``: a flag and the first bad step are kept *on the device* (no host read), and
      read on logging steps, before any checkpoint is written, and at the end of training. Training
      then stops; the steps after the bad one are thrown away with the final model, and no
      checkpoint is written from weights after it.

    Either way :attr:`step` is the (1-based) optimizer step that failed, or None.
    """

    def __init__(self, mode: str = "every_step") -> None:
        self.mode = mode
        self.step: int | None = None
        self.what = ""
        self.seen = ""
        self._trainer: Any = None
        self._first_bad: Any = None  # logging_steps mode: on the device, -1 while every loss was finite
        self._bad_value: Any = None

    def attach(self, trainer: Any) -> NanGuard:
        original = trainer.training_step
        self._trainer = trainer

        def every_step(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            loss = original(model, inputs, *args, **kwargs)
            bad = not bool(torch.isfinite(loss).all())
            if distributed.world_size() > 1:  # a NaN on one process stops all of them at the same step
                bad = distributed.any_process(bad)
            if self.step is None and bad:
                self.step = trainer.state.global_step + 1
                self.what = f"the loss became {float(loss)}"
                model.zero_grad(set_to_none=True)
                trainer.control.should_training_stop = True
            return loss

        def deferred(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            loss = original(model, inputs, *args, **kwargs)
            detached = loss.detach()
            value = detached.float().reshape(-1)[:1].reshape(())
            finite = torch.isfinite(detached).all()
            if self._first_bad is None:
                self._first_bad = torch.full((), -1, dtype=torch.long, device=value.device)
                self._bad_value = torch.zeros((), dtype=torch.float32, device=value.device)
            new = (~finite) & (self._first_bad < 0)  # first bad loss: remember its step and value, on the device
            self._first_bad = torch.where(new, trainer.state.global_step + 1, self._first_bad)
            self._bad_value = torch.where(new, value, self._bad_value)
            return loss

        trainer.training_step = every_step if self.mode == "every_step" else deferred
        return self

    def read(self) -> None:
        """logging_steps mode: bring the device-side flag to the host (one read; all processes agree)."""
        if self.step is not None or self._first_bad is None:
            return
        own = int(self._first_bad)  # this process's first bad step, -1 if none
        first = distributed.first_flagged_step(own) if distributed.world_size() > 1 else own
        if first >= 0:
            self.step = first
            value = float(self._bad_value) if own >= 0 else float("nan")  # another process saw it
            self.what = f"the loss became {value}"
            seen = self._trainer.state.global_step if self._trainer is not None else first
            if seen > first:  # the steps in between ran on; they are discarded with the final model
                self.seen = (f" (found at step {seen}: with training.nan_check logging_steps the loss is read "
                             "on logging steps)")

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.mode != "every_step" and (control.should_log or control.should_save or control.should_evaluate
                                          or control.should_training_stop or state.global_step >= state.max_steps):
            self.read()
        if self.step is None and control.should_save and model is not None and not weights_finite(model):
            self.step, self.what = state.global_step, "the weights became NaN/inf"
        self._stop_if_bad(control)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.read()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.mode != "every_step":
            self.read()
        self._stop_if_bad(control)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")  # a second line of defence when logging_nan_inf_filter is off
        if self.step is None and loss is not None and not math.isfinite(loss):
            self.step, self.what = state.global_step, f"the logged loss became {loss}"
        self._stop_if_bad(control)

    def _stop_if_bad(self, control: Any) -> None:
        if self.step is not None:
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False

    def message(self, output_dir: Path) -> str:
        kept = last_checkpoint(output_dir)
        kept_text = f"the last good checkpoint is {kept}" if kept else "no checkpoint had been saved"
        return (
            f"{self.what} at step {self.step}{self.seen}; training "
            f"stopped, the final model was NOT written and {kept_text}. "
            "Lower training.learning_rate, raise warmup_ratio, use precision fp32 or bf16 instead of fp16, "
            "or check the data for broken rows"
        )


class Preempted(TrainingAborted):
    """Training stopped on SIGINT/SIGTERM after saving a resumable checkpoint."""

    same_on_every_process = True  # every process stopped at the same step

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class PreemptionGuard(TrainerCallback):
    """SIGINT/SIGTERM during training: finish the step, save ``checkpoint-<step>``, stop.

    The handlers only record the signal; :meth:`on_step_end` acts on it, so the checkpoint holds a
    whole optimizer step and the RNG states right after it, which is what makes a resume exact. A
    second Ctrl-C raises ``KeyboardInterrupt`` at once (the model so far is then saved on the side,
    see :func:`training_faults`).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped_step: int | None = None
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[PreemptionGuard]:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals stay as they are
            self._previous.clear()
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now
        if self.signum is None:
            self.signum = signum

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not distributed.any_process(self.signum is not None):
            return
        if self.signum is None:  # another process was signalled
            self.signum = signal.SIGTERM
        self.stopped_step = state.global_step
        control.should_save = True
        control.should_training_stop = True
        # keep this checkpoint whatever the rotation and best-model settings say
        args.save_total_limit = None
        args.load_best_model_at_end = False

    def message(self, checkpoint: Path | None, command: str) -> str:
        name = signal.Signals(self.signum or signal.SIGTERM).name
        if checkpoint is None:
            return f"stopped by {name} at step {self.stopped_step}; no checkpoint could be written"
        return f"stopped by {name} at step {self.stopped_step}; checkpoint saved in {checkpoint}. To resume: {command}"


@contextlib.contextmanager
def training_faults(
    config: RunConfig,
    trainer: Any,
    model: Any,
    output_dir: Path,
    stage: str = "training",
    on_abort: Callable[[], Any] = lambda: None,
) -> Iterator[None]:
    """Turn the faults of a training run into :class:`TrainingAborted` with advice (see module doc)."""

    try:
        yield
    except KeyboardInterrupt:
        on_abort()
        step = trainer.state.global_step
        if not weights_finite(model):
            raise TrainingAborted(f"interrupted at step {step}; the weights "
                                  "were not finite, so nothing was saved") from None
        if not distributed.is_main():  # every process holds the same weights: the main one saves them
            raise TrainingAborted(f"interrupted at step {step}; the main process saves the model so far") from None
        saved = save_model_atomically(model, output_dir / "interrupted")
        raise TrainingAborted(
            f"interrupted at step {step}; the model so far is saved in {saved}. To continue from it: "
            f"mtrain run CONFIG --set model.name_or_path={saved} --set training.output_dir=NEW_DIR"
        ) from None
    except torch.OutOfMemoryError:
        on_abort()
        raise TrainingAborted(out_of_memory_advice(config, trainer.state.global_step)) from None
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        on_abort()
        kept = last_checkpoint(output_dir)
        target = f" ({exc.filename})" if exc.filename else ""
        raise TrainingAborted(
            f"could not write to disk during {stage} at step {trainer.state.global_step}: "
            f"{exc.strerror or exc}{target}. "
            + (f"The last complete checkpoint, {kept}, is intact. " if kept else "")
            + "Free some space (or point training.output_dir at a larger disk), then run again"
            + (" from that checkpoint: --set model.name_or_path=" + str(kept) if kept else "")
        ) from None


def out_of_memory_advice(config: RunConfig, step: int) -> str:
    """What to change when a batch does not fit in GPU memory, for the losses this run uses."""
    return f"out of GPU memory at step {step}; " + out_of_memory_tips(config)


def out_of_memory_tips(config: RunConfig) -> str:
    """The changes that make a batch fit, for the losses this run uses ("; "-separated)."""

    t = config.training
    names = {config.loss_for(d).name for d in config.datasets}
    tips = []
    cached = sorted(n for n in names if n.startswith("Cached"))
    in_batch = sorted(n for n in names if LOSSES[n].in_batch_negatives and not n.startswith("Cached"))
    if cached:
        tips.append("lower loss.kwargs.mini_batch_size (the batch and its in-batch negatives stay the same)")
    if in_batch:
        tips.append(
            f"switch loss.name from {in_batch[0]} to Cached{in_batch[0]} with kwargs {{mini_batch_size: 16}}"
            if f"Cached{in_batch[0]}" in LOSSES
            else "use a Cached loss variant with a small mini_batch_size"
        )
        tips[-1] += f": it keeps the batch of {t.per_device_train_batch_size} at the memory of 16 rows"
    tips.append(
        f"lower training.per_device_train_batch_size (now {t.per_device_train_batch_size}) and raise "
        "gradient_accumulation_steps to keep the step size"
    )
    tips.append("or lower model.max_seq_length")
    return "; ".join(tips)
