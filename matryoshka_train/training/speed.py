"""Which speed features a run uses on its device, and why.

Every speed feature of ours is judged on the device a run trains on: a trick that saves compute on
a CPU (where the model is the whole cost) can lose on a GPU (where small kernels, extra host work
and synchronisations are the cost). Each feature's training key takes ``auto``, and :func:`decide`
turns ``auto`` into on or off for the device from what the benchmarks measured there
(docs/benchmarks.md). A feature that has not been measured faster on a device stays off there.
``mtrain check`` and ``mtrain run`` print the decisions with their reasons; results.json keeps them.

The evidence, in one place (update it when a benchmark on that device says otherwise):

* sorted forward: CPU 1.71-1.91x samples/s on 5-200-word texts (``scripts/bench/train.py``,
  2026-11-23); GPU (one H100, 2026-11-27): 0.09-0.42x, so off.
* padding to a multiple of 64: GPU (one H100, 2026-11-27, ``scripts/bench/gpu_profile.py`` bert-base,
  batch 64, 16-510 tokens): 3.6-4.4x the real tokens/s of padding to the longest row, because every
  new batch width costs a first-use set-up (a cuDNN attention plan) that a handful of 64-wide buckets
  pays once; ``scripts/bench/train.py`` 16-256 words: a first run in the process at 2.6x the speed of
  exact widths (558.7 vs 215.1 samples/s). On
  CPU there is no such set-up and the extra padding is pure compute, so off there.
* GPU-sized chunks (with widths rounded to ``pad_to_multiple_of``): one H200, 2026-11-28: 0.41x our
  padded forward in training (257.8 vs 631.7 samples/s), 0.40x in ``gpu_profile.py``; so the sorted
  forward stays off on GPUs whatever its chunk size.
* packed forward (``models/packed_forward.py``: position-wise layers on real tokens only, attention by
  flash attention's varlen kernel): one H200, 2026-11-28, BERT-base, ``scripts/bench/train.py``
  16-256 tokens batch 128: 1.17-1.59x the samples/s of our padded forward in the same process, at
  57% of its peak memory (22.4 vs 39.4 GiB); 5-40 tokens batch 512: 1.01-1.03x, 62% of the memory
  (16.1 vs 26.0 GiB); ``gpu_profile.py`` bert-base: 1.15x. So on for CUDA where the varlen kernel
  runs (bf16/fp16 training on sm80 or newer); elsewhere its attention would run padded, per row,
  which no GPU run measured, so off. With a gradient-cache loss (Cached*), one H200, 2026-11-28,
  ``gpu_profile.py`` bert-base-cached (CachedMNRL, mini-batch 64, batch 250): 1.59x the real tokens/s
  of batches padded to 64 (56,355 vs 35,550) at 82% of the memory, so on there too. CPU
  (all-MiniLM-L6-v2, 5-200 words, 2026-11-27): 1.30x the plain script but 0.69x the sorted forward,
  so off there.
* all columns in one encoder call (``models/merged_columns.py``): one H200, 2026-11-28, on top of the
  packed forward, in the same process: 16-256 tokens 1.14x (1,032 vs 904 samples/s, run 4) and
  1.25-1.28x (run 5, first and warm runs); 5-40 tokens 1.20x (4,929 vs 4,093); ``gpu_profile.py``
  bert-base 1.29x (MFU 18.3% -> 23.6%); 40% fewer aten ops per step. So on wherever the packed
  forward is on. Without it the merged call pads the anchors to the documents' width, which no
  benchmark measured, so off there (and on CPUs).
* every Matryoshka dim of MNRL in one pass (``losses/fused_mnrl.py``): the loss alone (CPU, 2026-11-28,
  five dims of 768, batch 128 triplets, forward and backward, through PerDimMatryoshkaLoss on fixed
  embeddings, ``scripts/bench/fused_loss.py``) 415 vs 1,593 aten operations and 7.2-7.4 vs 14.0-14.3 ms
  (1.96x); a BERT-base training step (packed + merged, counted on the CPU with the first version's 403
  ops) 12,932 vs 14,062 operations, where the H200's step made 8,985 in all. Not measured in training
  on a GPU, where the op count is the cost, so off; the GPU suite's train-long runs it as
  ``ours:fusedloss``.
* compiled layers (``models/compiled_layers.py``): CPU (all-MiniLM-L6-v2, 5-200 words, 2026-11-27)
  0.85x our default forward (compiled steps alone, compile time excluded), so off there. One H200,
  2026-11-28: 1.21x our padded forward in training and 1.23x in ``gpu_profile.py``, and on top of the
  packed forward 1.35x in ``gpu_profile.py`` but 1.11x (first run) and 0.80x (warm run) in training,
  where the packed step waits on the host; plus 4-14 s of compiling per run. On top of packed and
  merged columns (2026-11-28, runs 4-5): 1.30x in one training run, 0.96x in the next, 1.31x in
  ``gpu_profile.py`` (MFU 30.9%). Not reliably faster in training, so off.
* pre-tokenization and our no-duplicates sampler: work on the host before or beside training,
  measured on the host (``scripts/bench/train.py`` tokenize-once timing, ``scripts/bench/sampler.py``
  >= 10x); they do not run on the accelerator, so they stay on for every device.
* reading a batch's rows a column at a time (``data/fetch.py``): host work between steps, measured on the
  host (``scripts/bench/batches.py``, CPU, 2026-11-28): 128 triplets of 16-256 words read and padded in
  2.5 ms per batch instead of 5.3 (2.2x), and 2.5 instead of 9.3 (3.8x) with four datasets, whose rows
  torch's ConcatDataset reads one at a time; 512 triplets of 5-40 words 5.1 vs 7.9 ms (1.5x) and 5.2 vs
  27.1 (5.2x). The same batches, so on for every device. Its effect on a GPU step is not measured yet
  (the GPU suite's ``batches`` part and ``ours:rowfetch``).
* memory probe (``training/memory_probe.py``): not a speed feature but a fault found early: each dataset's
  largest batch (the costliest of as many as the run draws) runs forward and backward before the first step,
  so a batch that cannot fit in GPU memory stops the run at once. About one step's time; on for CUDA, whose
  memory is fixed, and off elsewhere. Whether the allocator's pool, grown to that batch before step 1, brings a
  first run closer to a warm one is not measured yet (the GPU suite's ``train-long-noprobe`` part).
* NaN check: reading the loss on the host every step costs nothing on a CPU (there is no device
  queue to drain) but stalls a GPU's queue every step (14% of samples/s on an H100); there it runs
  on logging and save steps.
* DataLoader workers: 0. On an H100 the main process collates a batch in 4-10 ms of a 0.23 s step, and
  with the synchronisations gone it does so while the GPU runs the previous step (92% of the step's
  wall time is kernel time), so workers have nothing to win. The packed step on an H200 is host-bound
  (2026-11-28): the wait for the next batch is 10-57 ms of a 0.09-0.17 s step there, so workers may
  win now; not measured with workers yet (the GPU suite runs them as ours:workers), so still 0.
* CUDA allocator: expandable segments (``training/allocator.py`` has the figures and who sets it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from . import allocator

DEFAULT_CHUNK_MIN_TOKENS = 1024  # the CPU-measured floor of one sorted-forward chunk (docs/benchmarks.md)
GPU_PAD_MULTIPLE = 64  # batch widths on CUDA: 3.6x the tokens/s of exact widths on an H100 (docs/benchmarks.md)


def training_device() -> str:
    """The device ``mtrain run`` trains on here: cuda, mps or cpu (what the trainer will pick)."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


@dataclass(frozen=True)
class SpeedPlan:
    """The resolved speed settings of one run (see the module docstring for the evidence)."""

    device: str
    sorted_forward: bool
    packed_forward: bool
    merge_columns: bool
    fused_loss: bool
    compile_layers: bool
    forward_chunk_min_tokens: int
    pretokenize: bool
    columnar_fetch: bool
    memory_probe: bool
    pad_to_multiple_of: int | None
    nan_check: str  # "every_step" | "logging_steps"
    dataloader_num_workers: int
    pin_memory: bool
    non_blocking: bool
    cuda_allocator: str | None = None  # the CUDA caching allocator's setting (training/allocator.py); None off CUDA
    reasons: dict[str, str] = field(default_factory=dict, compare=False)

    def lines(self) -> list[str]:
        """Human-readable lines for `mtrain check` / `mtrain run`."""

        def state(value: Any) -> str:
            if isinstance(value, bool):
                return "on" if value else "off"
            return "off" if value is None else str(value)

        out = [f"Speed features on {self.device}:"]
        for key in (
            "sorted_forward",
            "packed_forward",
            "merge_columns",
            "fused_loss",
            "compile_layers",
            "forward_chunk_min_tokens",
            "pretokenize",
            "columnar_fetch",
            "memory_probe",
            "pad_to_multiple_of",
            "nan_check",
            "dataloader_num_workers",
            "non_blocking",
            "cuda_allocator",
        ):
            if (key == "forward_chunk_min_tokens" and not self.sorted_forward) or (
                key == "cuda_allocator" and self.cuda_allocator is None
            ):
                continue
            out.append(f"  {key}: {state(getattr(self, key))} ({self.reasons.get(key, 'set in the config')})")
        return out

    def without_packed(self, why: str) -> SpeedPlan:
        """This plan with the packed forward off, ``why`` its recorded reason; merged columns go off
        with it where ``auto`` chose them (they were chosen for the packed forward)."""
        reasons = {**self.reasons, "packed_forward": why}
        merge = self.merge_columns
        if merge and reasons.get("merge_columns", "").startswith("auto:"):
            merge, reasons["merge_columns"] = False, "auto: off, because packed_forward is off"
        return dataclasses.replace(self, packed_forward=False, merge_columns=merge, reasons=reasons)

    @staticmethod
    def sampler_line(asked: str, resolved: str) -> str:
        """The batch sampler's line: which one, and why (chosen by the loss, not the device)."""
        if asked != "auto":
            why = "set in the config"
        elif resolved == "no_duplicates_fast":
            why = (
                "auto: in-batch negatives need batches without duplicate texts; ours measured >= 10x "
                "sentence-transformers' hashed sampler on the host (docs/benchmarks.md), on every device"
            )
        else:
            why = "auto: no in-batch negatives, so plain batches"
        return f"  batch_sampler: {resolved} ({why})"

    def summary(self) -> dict[str, Any]:
        """What results.json records."""
        return {
            "device": self.device,
            "sorted_forward": self.sorted_forward,
            "packed_forward": self.packed_forward,
            "merge_columns": self.merge_columns,
            "fused_loss": self.fused_loss,
            "compile_layers": self.compile_layers,
            "forward_chunk_min_tokens": self.forward_chunk_min_tokens if self.sorted_forward else None,
            "pretokenize": self.pretokenize,
            "columnar_fetch": self.columnar_fetch,
            "memory_probe": self.memory_probe,
            "pad_to_multiple_of": self.pad_to_multiple_of,
            "nan_check": self.nan_check,
            "dataloader_num_workers": self.dataloader_num_workers,
            "pin_memory": self.pin_memory,
            "non_blocking": self.non_blocking,
            "cuda_allocator": self.cuda_allocator,
        }


def varlen_why_not(training: Any, device: str, precision: str | None = None) -> str | None:
    """Why the packed forward's attention could not run on flash attention's varlen kernel in a run of
    this ``training`` section on ``device`` (None: it can). ``precision`` is the run's resolved one
    (``plan.resolve_precision``); without it, ``training.precision`` as that function would resolve it."""
    if device != "cuda":
        return "not a CUDA device"
    if precision is None:
        precision = training.precision
        if precision == "auto" and torch.cuda.is_available():
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"  # as plan.resolve_precision
    if precision == "fp32":
        return "training in fp32 (the varlen kernel needs bf16 or fp16)"
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0):
        return "a GPU older than sm80 (the varlen kernel needs Ampere or newer)"
    return None


def _packed_auto(training: Any, device: str, precision: str | None, gradient_cache: bool) -> tuple[bool, str]:
    """What ``packed_forward: auto`` becomes, and why (docs/benchmarks.md has the figures)."""
    if device == "cpu":
        return False, "measured 0.69x the sorted forward on CPU (1.30x the plain script; docs/benchmarks.md)"
    varlen_no = varlen_why_not(training, device, precision)
    if varlen_no is not None:
        return False, f"{varlen_no}, so its attention would run padded, which no GPU run measured"
    if gradient_cache:
        return True, ("with a gradient-cache loss (Cached*): measured 1.59x the real tokens/s of batches padded to "
                      "64 in CachedMNRL mini-batches (H200, docs/benchmarks.md)")
    return True, ("measured 1.17-1.59x samples/s of the padded forward on 16-256-token text and 1.01-1.03x on "
                  "5-40 tokens, at 57-62% of its memory (H200, docs/benchmarks.md)")


def decide(
    training: Any, device: str | None = None, precision: str | None = None, gradient_cache: bool = False
) -> SpeedPlan:
    """Resolve every ``auto`` speed key of a ``training`` config section for ``device`` (default: this
    machine's training device) and the run's resolved ``precision`` (default: ``training.precision``
    as the run would resolve it); ``gradient_cache``: a loss of the run embeds in mini-batches (the
    Cached* losses). Values set explicitly in the config are kept, with reason "set in the config"."""
    device = device or training_device()
    accelerator = device != "cpu"
    reasons: dict[str, str] = {}

    def pick(key: str, value: Any, auto_value: Any, why: str) -> Any:
        if value == "auto":
            reasons[key] = f"auto: {why}"
            return auto_value
        reasons[key] = "set in the config"
        return value

    sorted_forward = pick(
        "sorted_forward",
        training.sorted_forward,
        not accelerator,
        "measured 0.09-0.42x the plain forward on an H100 (docs/benchmarks.md), so off on GPUs"
        if accelerator
        else "measured 1.7-1.9x samples/s on CPU with texts of mixed length (docs/benchmarks.md)",
    )
    packed_on, packed_why = _packed_auto(training, device, precision, gradient_cache)
    packed = pick("packed_forward", training.packed_forward, packed_on, packed_why)
    if packed and training.packed_forward == "auto" and training.sorted_forward is True:
        packed = False  # the config asked for the sorted forward by name: the automatic choice yields
        reasons["packed_forward"] = "auto: off, because sorted_forward is set in the config"
    if packed and sorted_forward:
        sorted_forward = False  # the packed forward already runs no padding through the position-wise layers
        reasons["sorted_forward"] = "off: packed_forward replaces it"
    merge = pick(
        "merge_columns",
        training.merge_columns,
        packed,
        "measured 1.14-1.28x samples/s on top of the packed forward on 16-256-token text and 1.20x on 5-40 "
        "tokens (H200, docs/benchmarks.md)"
        if packed
        else "it pays only with packed_forward, which is off here (merged, the anchors would be padded to the "
        "documents' width)",
    )
    fused = pick(
        "fused_loss",
        training.fused_loss,
        False,
        "not measured in training yet: the loss alone makes 415 instead of 1,593 operations (the GPU step's "
        "cost), 1.96x the loop's speed on a CPU (five dims of 768, batch 128, scripts/bench/fused_loss.py); "
        "the GPU suite measures it as ours:fusedloss",
    )
    compile_layers = pick(
        "compile_layers",
        training.compile_layers,
        False,
        "measured 0.80-1.11x the packed forward alone in training on an H200, plus seconds of compiling "
        "(docs/benchmarks.md)"
        if accelerator
        else "measured 0.85x the default forward on CPU, compile time aside (docs/benchmarks.md)",
    )
    chunk_min = pick(
        "forward_chunk_min_tokens",
        training.forward_chunk_min_tokens,
        DEFAULT_CHUNK_MIN_TOKENS,
        f"{DEFAULT_CHUNK_MIN_TOKENS} padded tokens, the floor measured on CPU"
        + ("; GPU-sized chunks measured 0.41x the padded forward on an H200" if accelerator else ""),
    )
    pretokenize = pick(
        "pretokenize",
        training.pretokenize,
        True,
        "host-side work moved out of the training loop; measured on the host (tokenize once vs every batch)",
    )
    columnar = pick(
        "columnar_fetch",
        training.columnar_fetch,
        True,
        "host-side work between steps, measured on the host: a batch of 128 triplets read and padded in 2.5 ms "
        "instead of 5.3 (one dataset) and 9.3 (four; scripts/bench/batches.py, docs/benchmarks.md)",
    )
    cuda = device == "cuda"
    probe = pick(
        "memory_probe",
        training.memory_probe,
        cuda,
        "one forward and backward of the largest batch before training finds a batch that cannot fit now, not "
        "hours in; costs about one step (its effect on the first steps' speed is not measured yet)"
        if cuda
        else "no fixed device memory to probe here (a CPU run's memory is the machine's RAM)"
        if device == "cpu"
        else "only CUDA's memory is probed",
    )
    pad = pick(
        "pad_to_multiple_of",
        training.pad_to_multiple_of,
        GPU_PAD_MULTIPLE if cuda else None,
        f"{GPU_PAD_MULTIPLE}: each new batch width pays a first-use set-up on a GPU; measured 3.6x the "
        "tokens/s of exact widths on an H100 (docs/benchmarks.md)"
        if cuda
        else "no per-shape set-up here, so padding would only add compute"
        + ("" if device == "cpu" else "; not measured on this device"),
    )
    nan_check = pick(
        "nan_check",
        training.nan_check,
        "logging_steps" if accelerator else "every_step",
        "a host read of the loss every step would stall the GPU queue; checked on logging and save steps"
        if accelerator
        else "reading the loss on a CPU costs nothing, so every step",
    )
    workers = pick(
        "dataloader_num_workers",
        training.dataloader_num_workers,
        0,
        "not measured faster on a GPU yet: the packed step on an H200 waits 10-57 ms for its next batch, which "
        "workers would take off the main process; the GPU suite measures them as ours:workers (docs/benchmarks.md)"
        if accelerator
        else "on CPU the workers would compete with training for the same cores",
    )
    reasons["non_blocking"] = (
        "pinned batches are copied to the GPU without waiting for it" if cuda else "no GPU: nothing to copy"
    )
    cuda_allocator = None
    if cuda:
        cuda_allocator, reasons["cuda_allocator"] = allocator.describe()
    return SpeedPlan(
        device=device,
        sorted_forward=bool(sorted_forward),
        packed_forward=bool(packed),
        merge_columns=bool(merge),
        fused_loss=bool(fused),
        compile_layers=bool(compile_layers),
        forward_chunk_min_tokens=int(chunk_min),
        pretokenize=bool(pretokenize),
        columnar_fetch=bool(columnar),
        memory_probe=bool(probe),
        pad_to_multiple_of=pad,
        nan_check=nan_check,
        dataloader_num_workers=int(workers),
        pin_memory=cuda,
        non_blocking=cuda,
        cuda_allocator=cuda_allocator,
        reasons=reasons,
    )
