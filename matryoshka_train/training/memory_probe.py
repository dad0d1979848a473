"""The largest batch first: one forward and backward pass before training (``training.memory_probe``).

A batch's memory grows with its texts' lengths, and the sampler draws batches in random order, so
the batch that does not fit in GPU memory may come hours into a run. Before the first step this
module finds, for each training dataset, the largest batch the run will draw, near enough: it draws
as many batches as the run will (each epoch a random permutation of the rows cut into batches, from
the rows' lengths alone: 3-4 s for 50M rows drawn), and keeps the costliest by what activations
scale with (its tokens in all under the packed forward; each column's widest row times the rows
when padded). It runs those rows forward and backward through the run's own collator, forward
(packed, merged, compiled, as configured), loss and autocast. Then:

* a batch that does not fit ends the run at once, with the dataset, the batch and what to change,
  before any time is spent training;
* one that fits reports the peak memory it took, which says how much room the batch size leaves;
* the caching allocator's pool has grown to that batch's size, so the first steps do not grow it
  (whether that makes a first run as fast as a warm one is for the GPU suite to measure).

Why not each column's ``batch_size`` longest texts together, the true upper bound: where long texts
are rare (a long tail is common) no batch of the run comes near it, and a probe of it would stop runs
that train. The run's own draws differ from these, so its largest batch can be a little larger than
the one probed; then it runs out of memory in its step, as without the probe.

Nothing of the run changes: the gradients are dropped (the first optimizer step has not happened,
so no weight moved), the random-number generators are restored (dropout draws the same masks in
step 1 as without the probe; the draws here use their own generator), and the padding counters of
the packed and sorted forwards are put back. ``tests/test_memory_probe.py`` checks that a run with
the probe trains the same weights bit for bit. The optimizer's states do not exist yet (they come
with the first step), so a batch that fits here can still run out of memory there; that happens at
step 1, not hours in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..data.pretokenize import PREFIX, text_columns
from . import distributed

MAX_DRAWN_ROWS = 50_000_000  # rows drawn in all when finding a run's largest batch (3-4 s on a 2-core VM)


@dataclass
class Probed:
    """One dataset's largest batch, and what running it took."""

    dataset: str
    rows: int
    longest: int  # the longest text in it (tokens, or characters when ``unit`` says so)
    tokens: int | None  # all its texts' tokens, when pre-tokenized
    unit: str  # "tokens" or "characters"
    drawn: int = 1  # of how many batches drawn like the run's this is the costliest
    seconds: float = 0.0
    peak_bytes: int | None = None  # CUDA: the most memory allocated so far in the process, this pass included
    total_bytes: int | None = None  # CUDA: the device's memory

    def what(self) -> str:
        """"the largest of N batches like the run's, from D (R rows, texts up to L tokens, T in all)"."""
        size = f"{self.rows} rows, texts up to {self.longest:,} {self.unit}"
        if self.tokens is not None:
            size += f", {self.tokens:,} tokens in all"
        return f"the largest of {self.drawn:,} batches like the run's, from {self.dataset} ({size})"

    def line(self) -> str:
        memory = ""
        if self.peak_bytes is not None and self.total_bytes:
            memory = (f"; peak GPU memory {self.peak_bytes / 2**30:.1f} of {self.total_bytes / 2**30:.1f} GiB "
                      f"({self.peak_bytes / self.total_bytes:.0%}; the optimizer's states come with step 1)")
        return f"memory_probe: {self.what()} ran forward and backward in {self.seconds:.1f}s{memory}"

    def summary(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "rows": self.rows, "longest": self.longest, "unit": self.unit,
                "tokens": self.tokens, "batches_drawn": self.drawn, "seconds": round(self.seconds, 3),
                "peak_gib": None if self.peak_bytes is None else round(self.peak_bytes / 2**30, 3),
                "device_gib": None if not self.total_bytes else round(self.total_bytes / 2**30, 3)}


class DoesNotFit(Exception):
    """The largest batch of a dataset ran out of GPU memory (:attr:`probed` says which)."""

    def __init__(self, probed: Probed):
        super().__init__(probed.dataset)
        self.probed = probed


def _lengths(dataset: Any, column: str) -> np.ndarray | None:
    """Each row's length in ``column``: list values (token ids) or characters (strings); None for
    another type. Measured on the dataset's backing Arrow table (offsets only, nothing copied), then
    put in the dataset's own row order when it has an indices mapping (after a shuffle, split or
    select): taking the rows through the mapping would copy every token id of the column first."""
    backing = dataset.data
    values = backing.column(column)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        measure = pc.list_value_length
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        measure = pc.utf8_length
    else:
        return None
    chunks = [measure(chunk).fill_null(0).to_numpy(zero_copy_only=False) for chunk in values.chunks]
    lengths = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, dtype=np.int64)
    indices = getattr(dataset, "_indices", None)  # datasets' indices mapping (no public accessor)
    if indices is not None:
        lengths = lengths[indices.column(0).to_numpy().astype(np.int64)]
    if len(lengths) != len(dataset):  # a layout this does not know: the probe skips this dataset (a note)
        raise ValueError(f"the row order of {len(dataset)} rows over a table of {len(backing)} is not readable")
    return lengths


def costliest_batch(lengths: list[np.ndarray], batch_size: int, batches: int, packed: bool,
                    seed: int) -> tuple[np.ndarray, int]:
    """The row indices of the costliest of ``batches`` batches drawn as a run draws them (each epoch a
    random permutation of the rows cut into batches of ``batch_size``), and how many were drawn (at most
    :data:`MAX_DRAWN_ROWS` rows in all). ``lengths``: each text column's row lengths. The cost is what
    the batch's activations scale with: its tokens in all when ``packed`` (only real tokens run), else
    each column's widest row times the rows (every row is padded to it)."""
    n = len(lengths[0])
    count = min(batch_size, n)
    per_epoch = max(n // count, 1)
    wanted = max(1, min(batches, MAX_DRAWN_ROWS // count))
    total = np.sum(lengths, axis=0) if packed else None
    rng = np.random.default_rng(seed)
    best_cost, best, drawn = -1, np.arange(count), 0
    while drawn < wanted:
        take = min(per_epoch, wanted - drawn)
        epoch = rng.permutation(n)[: take * count].reshape(take, count)
        if packed:
            cost = total[epoch].sum(axis=1)
        else:
            cost = sum(column[epoch].max(axis=1) for column in lengths) * count
        i = int(np.argmax(cost))
        if cost[i] > best_cost:
            best_cost, best = int(cost[i]), epoch[i]
        drawn += take
    return best, drawn


def largest_batch(name: str, dataset: Any, batch_size: int, batches: int = 1, packed: bool = True,
                  seed: int = 0) -> tuple[list[dict[str, Any]], Probed]:
    """The rows of the costliest of ``batches`` batches drawn from ``dataset`` like the run's
    (:func:`costliest_batch`), and its size. Whole rows, as the run reads them: a batch of each
    column's longest texts together would be far larger than any the run draws where long texts are
    rare, and would stop runs that train."""
    columns = text_columns(dataset)
    if len(dataset) == 0 or not columns:
        raise ValueError("no rows or no text columns")
    pretokenized = all(f"{PREFIX}{c}__input_ids" in dataset.column_names for c in columns)
    lengths = []
    for column in columns:
        measured = f"{PREFIX}{column}__input_ids" if pretokenized else column
        values = _lengths(dataset, measured)
        if values is None:
            raise ValueError(f"column {measured} holds neither token ids nor text")
        lengths.append(values)
    chosen, drawn = costliest_batch(lengths, batch_size, batches, packed, seed)
    rows = dataset.select(chosen.tolist()).to_list()
    longest = max(int(column[chosen].max()) for column in lengths)
    tokens = sum(int(column[chosen].sum()) for column in lengths)
    unit = "tokens" if pretokenized else "characters"
    return rows, Probed(name, len(chosen), longest, tokens if pretokenized else None, unit, drawn=drawn)


def batches_in_run(args: Any, rows: int, all_rows: int) -> int:
    """How many batches a run with trainer arguments ``args`` draws from a dataset of ``rows`` rows,
    of ``all_rows`` in all its datasets (on every process together)."""
    size = max(args.per_device_train_batch_size, 1)
    if args.max_steps and args.max_steps > 0:
        steps = args.max_steps * args.gradient_accumulation_steps * distributed.world_size()
        return max(1, math.ceil(steps * rows / max(all_rows, 1)))
    return max(1, math.ceil(float(args.num_train_epochs) * rows / size))


def why_skipped(trainer: Any) -> str | None:
    """Why the probe cannot stand for this run's steps (None: it can)."""
    if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
        return "DeepSpeed/FSDP place the model when training starts"
    if getattr(trainer.args, "gradient_checkpointing", False):
        return "gradient checkpointing is switched on when training starts, so the probe would overstate the memory"
    return None


def run_probe(
    trainer: Any,
    counters: Iterable[Any] = (),
    echo: Callable[[str], None] = print,
    name: str = "train",
    packed: bool = False,
) -> list[Probed]:
    """Run each training dataset's largest batch forward and backward through ``trainer``'s
    collator, model and loss (module docstring); returns what each took. Raises :class:`DoesNotFit`
    when one runs out of GPU memory. ``counters``: objects (the packed or sorted forward) whose int
    attributes are put back afterwards; ``name``: the dataset's, when the trainer has one dataset (not
    a dict of them); ``packed``: the packed forward runs (a batch then costs its tokens in all, not its
    widest rows). Any other failure is reported in one line and skipped: the probe must never stop a
    run that would train."""
    skipped = why_skipped(trainer)
    if skipped is not None:
        echo(f"memory_probe: skipped ({skipped})")
        return []
    model, args = trainer.model, trainer.args
    device = next(model.parameters()).device
    datasets = trainer.train_dataset if isinstance(trainer.train_dataset, dict) else {name: trainer.train_dataset}
    total_rows = sum(len(d) for d in datasets.values())
    kept = [(obj, {k: v for k, v in vars(obj).items() if type(v) is int}) for obj in counters if obj is not None]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    was_training = model.training
    done: list[Probed] = []
    try:
        model.train()
        for label, dataset in datasets.items():
            try:
                rows, probed = largest_batch(label, dataset, args.per_device_train_batch_size,
                                             batches_in_run(args, len(dataset), total_rows), packed, args.seed)
            except Exception as exc:  # noqa: BLE001 - a dataset the probe cannot read still trains
                echo(_skipped(label, exc))
                continue
            try:
                _forward_backward(trainer, rows, label, device, probed)
            except torch.OutOfMemoryError:
                _release(trainer)
                raise DoesNotFit(probed) from None
            except Exception as exc:  # noqa: BLE001 - as above; a real fault shows again in step 1, with its trace
                _release(trainer)
                echo(_skipped(label, exc))
                continue
            _release(trainer)
            done.append(probed)
            echo(probed.line())
    finally:
        model.train(was_training)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        for obj, values in kept:
            for key, value in values.items():
                setattr(obj, key, value)
    return done


def _skipped(label: str, exc: Exception) -> str:
    """The one-line note for a dataset the probe skips."""
    first = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"memory_probe: skipped {label} ({type(exc).__name__}: {first})"


def _forward_backward(trainer: Any, rows: list[dict[str, Any]], name: str, device: torch.device,
                      probed: Probed) -> None:
    """The training step's forward (under the trainer's autocast) and backward on ``rows``; no
    optimizer step, no loss logged."""
    cuda = device.type == "cuda"
    if cuda:  # the peak counter is not reset: it is the process's (a benchmark around the run may read it)
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    inputs = trainer._prepare_inputs(trainer.data_collator(rows))
    dataset_name = inputs.pop("dataset_name", None) or name
    features, labels = trainer.collect_features(inputs)
    loss_fn = trainer.loss[dataset_name] if isinstance(trainer.loss, dict) else trainer.loss
    with trainer.accelerator.autocast():
        loss = loss_fn(features, labels)
        if isinstance(loss, dict):
            loss = torch.stack(list(loss.values())).sum()
    loss.backward()
    if cuda:
        torch.cuda.synchronize(device)
        probed.peak_bytes = torch.cuda.max_memory_allocated(device)
        probed.total_bytes = torch.cuda.get_device_properties(device).total_memory
    probed.seconds = time.perf_counter() - started


def _release(trainer: Any) -> None:
    """Drop the probe's gradients (model and loss modules); the memory stays in the allocator's pool."""
    trainer.model.zero_grad(set_to_none=True)
    losses = trainer.loss.values() if isinstance(trainer.loss, dict) else [trainer.loss]
    for loss in losses:
        if isinstance(loss, torch.nn.Module):
            loss.zero_grad(set_to_none=True)
