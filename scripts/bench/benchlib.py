"""Shared pieces of the training benchmarks (scripts/bench/train.py, scripts/bench/gpu_profile.py).

* Encoders built from a transformers config (random weights: speed does not depend on them) with a
  word-level tokenizer built here, one token per word, so nothing comes from the hub and a text of
  n words is exactly n tokens (+ [CLS] and [SEP]).
* A step clock that adds no host-device synchronisation inside the timed window: on CUDA it records
  an event at the end of each step and reads the times after the window; it synchronises only at the
  window's start and end.
* A token counter: a forward pre-hook on the encoder module that sums the attention masks on the
  device (read once at the end) and takes the run tokens from the shapes (known on the host).
* Instruments for one profiled window: collator time, time the training loop waits for a batch,
  host-device synchronisation points (profiler ops and runtime calls, and a Python-level tally of
  the tensor methods that read a value back, with their callers), and a summary of a
  torch.profiler window: aten ops / kernels per step, distinct GEMM shapes, kernel time.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

MODELS = {
    "bert-base": {"arch": "bert", "layers": 12, "hidden": 768, "heads": 12, "ffn": 3072, "vocab": 30522},
    "xlmr-large": {"arch": "xlm-roberta", "layers": 24, "hidden": 1024, "heads": 16, "ffn": 4096, "vocab": 250002},
    "tiny": {"arch": "bert", "layers": 2, "hidden": 64, "heads": 4, "ffn": 128, "vocab": 4000},
}
WORDS_IN_TOKENIZER = 4000  # [PAD] [UNK] [CLS] [SEP] w4 … w3999
MAX_POSITIONS = 512  # tokens a built model takes (position table of 514: XLM-R offsets by 2)


def set_cuda_allocator() -> dict[str, Any]:
    """What `mtrain run` does at start, before torch loads (the allocator reads its setting at CUDA's
    first allocation): PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True unless an allocator setting is
    in the environment. For the whole process, so both sides run with it. Returns the settings fields
    a benchmark's JSON records."""
    from matryoshka_train.training import allocator  # why: no torch import there; it must run before torch loads

    set_here = allocator.default_to_expandable()
    return {
        "cuda_allocator": allocator.describe()[0],  # PYTORCH_CUDA_ALLOC_CONF (or PYTORCH_ALLOC_CONF)
        "cuda_allocator_set_by_bench": set_here,  # False: it came from the environment
    }


def matryoshka_dims(hidden: int) -> list[int]:
    """Five dims for a 768-wide model (768/512/256/128/64, as in issue #14), fewer for small ones."""
    dims = [d for d in (hidden, 512, 256, 128, 64) if d <= hidden]
    return sorted(set(dims), reverse=True) if hidden >= 128 else [hidden, hidden // 2, hidden // 4, hidden // 8]


def word_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(4, WORDS_IN_TOKENIZER)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=MAX_POSITIONS,
    )


def build_model(name: str, root: Path, device: str = "cpu", max_seq_length: int = MAX_POSITIONS, seed: int = 0) -> Any:
    """A SentenceTransformer (transformer + mean pooling) of the named size with random weights and the
    word-level tokenizer; its Hugging Face files are written under ``root / "hf"``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import AutoConfig, AutoModel

    p = MODELS[name]
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        p["arch"],
        vocab_size=p["vocab"],
        hidden_size=p["hidden"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        intermediate_size=p["ffn"],
        max_position_embeddings=MAX_POSITIONS + 2,
        pad_token_id=0,
    )
    AutoModel.from_config(config).save_pretrained(root / "hf")
    word_tokenizer().save_pretrained(root / "hf")
    transformer = modules.Transformer(str(root / "hf"), max_seq_length=max_seq_length)
    return SentenceTransformer(modules=[transformer, modules.Pooling(p["hidden"], pooling_mode="mean")], device=device)


def word_text(rng: random.Random, low: int, high: int) -> str:
    """A text of low..high words of the word-level tokenizer (one token each)."""
    return " ".join(f"w{rng.randrange(4, WORDS_IN_TOKENIZER)}" for _ in range(rng.randint(low, high)))


def non_embedding_params(model: Any) -> int:
    """Parameters that do work per token (the embedding tables and the unused pooler left out)."""
    return sum(x.numel() for name, x in model.named_parameters() if "embeddings" not in name and "pooler" not in name)


def encoder_shape(model: Any) -> tuple[int, int]:
    """(layers, hidden) of the model's transformer."""
    config = model[0].auto_model.config
    return int(config.num_hidden_layers), int(config.hidden_size)


def train_flops(params: int, layers: int, hidden: int, real_tokens: float, sum_sq_lengths: float) -> float:
    """FLOPs of a training step on real tokens: 6 x non-embedding parameters per token, plus attention
    (scores and the weighted sum, 2 x 2 x hidden x length per token and layer forward, x3 with backward)."""
    return 6.0 * params * real_tokens + 12.0 * layers * hidden * sum_sq_lengths


def describe_optimizer(optimizer: Any, args: Any = None) -> dict[str, Any] | None:
    """Which optimizer a run trains with (fused / foreach matter on a GPU)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate wraps it
    if inner is None:
        return None
    defaults = getattr(inner, "defaults", {}) or {}
    return {
        "optim": str(getattr(args, "optim", "")),
        "class": type(inner).__name__,
        "fused": defaults.get("fused"),
        "foreach": defaults.get("foreach"),
        "capturable": defaults.get("capturable"),
    }


def device_warmup(device: str) -> None:
    """Pay the device's start-up (CUDA context, cuBLAS handle, first kernels) before anything is timed."""
    import torch

    x = torch.randn(1024, 1024, device=device)
    (x @ x).sum()
    if device == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            (x @ x).sum()
        torch.cuda.synchronize()


SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


def restrict_sdpa(spec: str | None) -> dict[str, bool] | None:
    """Allow only the named scaled-dot-product-attention kernels in this process (comma-separated, of
    flash, efficient, cudnn, math; None or "" leaves PyTorch's choice). Returns what is enabled, for the
    JSON. On an H100 PyTorch picks cuDNN's attention for masked bf16 batches, which builds a plan per
    new shape; this lets a benchmark compare it with the memory-efficient kernel on both sides at once."""
    import torch

    if not spec:
        return None
    wanted = {b.strip() for b in spec.split(",") if b.strip()}
    unknown = wanted - set(SDPA_BACKENDS)
    if unknown or not wanted:
        raise SystemExit(f"--sdpa wants a comma-separated subset of {', '.join(SDPA_BACKENDS)}, got {spec!r}")
    for name in SDPA_BACKENDS:
        getattr(torch.backends.cuda, f"enable_{'mem_efficient' if name == 'efficient' else name}_sdp")(
            name in wanted
        )
    return {name: name in wanted for name in SDPA_BACKENDS}


def cuda_memory_counters() -> dict[str, int]:
    """Caching-allocator counters (cudaMalloc calls, retries after freeing the cache …): cheap, no sync."""
    import torch

    stats = torch.cuda.memory_stats()
    keys = ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_sync_all_streams", "num_ooms")
    out = {k: int(stats.get(k, 0)) for k in keys}
    out["reserved_bytes"] = int(torch.cuda.memory_reserved())
    out["segments"] = int(stats.get("segment.all.current", 0))
    return out


class StepClock:
    """Step-end marks without waiting for the device.

    ``start()`` synchronises once and marks the window's start; ``mark()`` at each step end records a
    CUDA event (nothing waits) and the host clock; ``stop()`` marks, synchronises once and reads the
    wall time of the window. Device step times come from the events after the window."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.events: list[Any] = []
        self.host: list[float] = []
        self.started = self.stopped = None

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.started = time.perf_counter()
        self.mark()

    def mark(self) -> None:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.events.append(event)
        self.host.append(time.perf_counter())

    def stop(self) -> None:
        self.mark()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.stopped = time.perf_counter()

    @property
    def steps(self) -> int:
        return max(len(self.host) - 1, 0) if self.stopped is not None else 0

    @property
    def seconds(self) -> float:
        return (self.stopped - self.started) if self.stopped is not None else 0.0

    def step_seconds(self) -> list[float]:
        """Per step: the device timeline's step time on CUDA (event to event), else the host's."""
        if self.cuda and len(self.events) > 1:
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.events, self.events[1:])][: self.steps]
        return [b - a for a, b in zip(self.host, self.host[1:])][: self.steps]

    def host_step_seconds(self) -> list[float]:
        """Per step: when the host finished issuing the step (on CUDA it may run ahead of the device)."""
        return [b - a for a, b in zip(self.host, self.host[1:])][: self.steps]


class TokenCounter:
    """Forward pre-hook on the encoder (the model's first module): counts what the encoder ran.

    Real tokens and the sum of squared real lengths (for attention FLOPs) accumulate in device tensors,
    read once by :meth:`read`; run tokens (rows x width) and the call shapes come from the masks'
    shapes, known on the host. Counting only while ``on``."""

    def __init__(self, module: Any):
        self.on = False
        self.run_tokens = 0
        self.calls = 0
        self.shapes: list[tuple[int, int]] = []
        self._real = self._sq = None
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not self.on:
            return
        features = args[0] if args else kwargs.get("features", kwargs.get("input"))
        mask = features.get("attention_mask") if isinstance(features, dict) else None
        if mask is None or getattr(mask, "ndim", 0) != 2:
            return
        import torch

        lengths = mask.sum(dim=1, dtype=torch.long)
        real, sq = lengths.sum(), (lengths * lengths).sum()
        self._real = real if self._real is None else self._real + real
        self._sq = sq if self._sq is None else self._sq + sq
        self.run_tokens += mask.numel()
        self.calls += 1
        self.shapes.append((int(mask.shape[0]), int(mask.shape[1])))

    def read(self) -> tuple[int, int]:
        """(real tokens, sum of squared real lengths): one read of the device, after the window."""
        return (int(self._real) if self._real is not None else 0, int(self._sq) if self._sq is not None else 0)

    def remove(self) -> None:
        self.handle.remove()


# --------------------------------------------------------------------------------------------
# instruments for a profiled window

_STATE = {"in_data": 0}


class TimedCollator:
    """Wraps a data collator: times each call and marks it as "collate" in a profiler trace.
    Everything else (valid_label_columns …) comes from the wrapped collator."""

    def __init__(self, inner: Any, meter: DataMeter):
        self.inner = inner
        self.meter = meter

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def __call__(self, features: Any) -> Any:
        from torch.profiler import record_function

        began = time.perf_counter()
        _STATE["in_data"] += 1
        try:
            with record_function("collate"):
                return self.inner(features)
        finally:
            _STATE["in_data"] -= 1
            if self.meter.on:
                self.meter.collate_s.append(time.perf_counter() - began)


class DataMeter:
    """Collator time and the time the training loop waits for its next batch (sampler, dataset reads,
    collation and the copy to the device), for every SentenceTransformerTrainer built while
    :meth:`installed`; counted only while ``on``. With DataLoader workers the collator runs in the
    workers: its time is not seen here, the wait still is."""

    def __init__(self) -> None:
        self.on = False
        self.collate_s: list[float] = []
        self.wait_s: list[float] = []

    @contextlib.contextmanager
    def installed(self):
        from sentence_transformers import SentenceTransformerTrainer
        from torch.profiler import record_function

        meter = self
        cls = SentenceTransformerTrainer
        build_loader = cls.get_train_dataloader
        get_batches = cls.get_batch_samples
        had_loader = "get_train_dataloader" in cls.__dict__
        had_batches = "get_batch_samples" in cls.__dict__

        def get_train_dataloader(trainer):
            collator = trainer.data_collator
            trainer.data_collator = TimedCollator(collator, meter)  # only while the loader is built
            try:
                return build_loader(trainer)
            finally:
                trainer.data_collator = collator

        def get_batch_samples(trainer, *args, **kwargs):
            began = time.perf_counter()
            _STATE["in_data"] += 1
            try:
                with record_function("next_batch"):
                    return get_batches(trainer, *args, **kwargs)
            finally:
                _STATE["in_data"] -= 1
                if meter.on:
                    meter.wait_s.append(time.perf_counter() - began)

        cls.get_train_dataloader = get_train_dataloader
        cls.get_batch_samples = get_batch_samples
        try:
            yield self
        finally:
            if had_loader:
                cls.get_train_dataloader = build_loader
            else:
                del cls.get_train_dataloader
            if had_batches:
                cls.get_batch_samples = get_batches
            else:
                del cls.get_batch_samples

    def summary(self, steps: int) -> dict[str, Any]:
        steps = max(steps, 1)
        return {
            "collate_calls": len(self.collate_s),
            "collate_s_per_step": sum(self.collate_s) / steps,
            "next_batch_wait_s_per_step": sum(self.wait_s) / steps,
        }


_OPTIM_FILES = ("torch/optim/", "torch\\optim\\")
_READBACKS = ("item", "tolist", "__bool__", "__int__", "__float__", "numpy", "cpu")


class ReadbackTally:
    """Counts, with their callers, the tensor methods that read a value back to the host
    (item, tolist, bool(), int(), float(), numpy(), cpu()): on a GPU each one waits for the device.

    On CUDA only calls on device tensors count. On a CPU run every call counts (a proxy: what would
    wait if the tensor lived on a GPU), except those made while fetching or collating a batch (host
    data on a GPU run as well) and the optimizer's reads of its step counters (kept on the CPU by
    non-capturable optimizers on every device), which are counted apart."""

    def __init__(self, device: str, repo: Path):
        self.cuda = device == "cuda"
        self.repo = str(repo)
        self.counts: collections.Counter = collections.Counter()
        self.callers: collections.Counter = collections.Counter()
        self.optimizer: collections.Counter = collections.Counter()
        self._saved: dict[str, Any] = {}

    def _where(self) -> str:
        frame = sys._getframe(2)
        name = frame.f_code.co_filename
        for marker in ("site-packages" + os.sep, self.repo + os.sep):
            if marker in name:
                name = name.split(marker, 1)[1]
                break
        return f"{name}:{frame.f_lineno} {frame.f_code.co_name}"

    def _wrap(self, method: str, original: Any) -> Any:
        tally = self

        def counted(tensor, *args, **kwargs):
            if _STATE["in_data"] == 0 and (tensor.device.type != "cpu" if tally.cuda else True):
                where = tally._where()
                if not tally.cuda and where.startswith(_OPTIM_FILES):
                    tally.optimizer[method] += 1  # non-capturable optimizers keep `step` on the CPU: host-only
                else:
                    tally.counts[method] += 1
                tally.callers[f"{method} @ {where}"] += 1
            return original(tensor, *args, **kwargs)

        return counted

    def start(self) -> None:
        import torch

        for method in _READBACKS:
            original = getattr(torch.Tensor, method)
            self._saved[method] = torch.Tensor.__dict__.get(method)
            setattr(torch.Tensor, method, self._wrap(method, original))

    def stop(self) -> None:
        import torch

        for method, saved in self._saved.items():
            if saved is None:
                delattr(torch.Tensor, method)
            else:
                setattr(torch.Tensor, method, saved)
        self._saved.clear()

    def summary(self, steps: int) -> dict[str, Any]:
        steps = max(steps, 1)
        return {
            "scope": "device tensors" if self.cuda else "cpu proxy: every call outside data loading",
            "per_step": sum(self.counts.values()) / steps,
            "by_method_per_step": {k: v / steps for k, v in sorted(self.counts.items())},
            "optimizer_host_scalars_per_step": sum(self.optimizer.values()) / steps,
            "top_callers": [{"where": k, "per_step": v / steps} for k, v in self.callers.most_common(12)],
        }


# ops whose result size or value the host needs: each one waits for the device on a GPU (item(),
# bool(), int() … all end in _local_scalar_dense, counted once: not their aten::item / is_nonzero too)
SYNC_OPS = (
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::equal",
)
GEMM_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::linear",
    "aten::matmul",
    "aten::scaled_dot_product_attention",
)
GEMM_PREFIXES = ("aten::_scaled_dot_product_", "aten::_flash_attention", "aten::_efficient_attention")
SYNC_RUNTIME = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
ALLOC_RUNTIME = ("cudaMalloc", "cudaFree", "cudaHostAlloc", "cudaFreeHost")

# Where a step's GPU time goes: a CUDA kernel's category by fragments of its (lower-cased) name, the first
# match winning. What MFU leaves out shows here: time in anything but "gemm" and "attention" is the
# memory-bound work between the matrix products (the target of fused or compiled kernels).
KERNEL_CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "_mma_", "splitk")),
    ("optimizer", ("multi_tensor_apply", "adam")),
    ("compiled (triton)", ("triton",)),
    ("layer norm", ("layer_norm", "layernorm")),
    ("dropout / random", ("dropout", "philox", "bernoulli")),
    ("gelu", ("gelu",)),
    ("softmax / loss", ("softmax", "logsumexp", "cross_entropy", "nll_loss")),
    ("index / gather / cat", ("index", "gather", "scatter", "catarraybatched", "embedding")),
    ("copy / cast", ("copy_kernel", "direct_copy")),
    ("reduction", ("reduce",)),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
)


def kernel_category(name: str) -> str:
    """The :data:`KERNEL_CATEGORIES` entry a kernel's name falls in ("other" if none)."""
    lower = name.lower()
    for category, fragments in KERNEL_CATEGORIES:
        if any(f in lower for f in fragments):
            return category
    return "other"


def busy_ns(events: list[Any]) -> int:
    """How long at least one of ``events`` ran (their intervals' union): the GPU's busy time, which
    the kernels' summed durations overstate where kernels overlap on several streams."""
    total, end = 0, None
    for e in sorted(events, key=lambda e: e.start_ns()):
        start, stop = e.start_ns(), e.end_ns()
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def kernel_breakdown(kernels: list[Any], steps: int, top: int = 15) -> dict[str, Any]:
    """Per step: kernel time and count by :func:`kernel_category`, the GPU's busy time, and the ``top``
    kernels by time (name cut to 160 characters)."""
    time_by: collections.Counter = collections.Counter()
    count_by: collections.Counter = collections.Counter()
    per_kernel: dict[str, list[int]] = {}
    for e in kernels:
        category = kernel_category(e.name())
        time_by[category] += e.duration_ns()
        count_by[category] += 1
        entry = per_kernel.setdefault(e.name(), [0, 0])
        entry[0] += 1
        entry[1] += e.duration_ns()
    ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "gpu_busy_s_per_step": busy_ns(kernels) / 1e9 / steps,
        "kernel_time_by_category_s_per_step": {k: v / 1e9 / steps for k, v in time_by.most_common()},
        "kernels_by_category_per_step": {k: count_by[k] / steps for k, _ in time_by.most_common()},
        "top_kernels": [
            {"name": name[:160], "category": kernel_category(name), "calls_per_step": n / steps,
             "s_per_step": ns / 1e9 / steps}
            for name, (n, ns) in ranked
        ],
    }


def _kineto_events(prof: Any) -> list[Any]:
    results = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if results is None:
        raise RuntimeError("this torch.profiler has no kineto results")
    return list(results.events())


def _activity(e: Any) -> str:
    try:
        return str(e.activity_type())
    except Exception:  # noqa: BLE001 - older kineto events have no activity type
        return ""


def _on_cpu(e: Any) -> bool:
    return str(e.device_type()).endswith("CPU")


def summarize_profile(prof: Any, steps: int, own_device_syncs: int = 0) -> dict[str, Any]:
    """Per-step figures of a torch.profiler window of ``steps`` training steps.

    aten ops (all, and top-level ones: not called from inside another aten op), ops that wait for
    the device (``SYNC_OPS``; those inside the data loading's "collate"/"next_batch" ranges and the
    optimizer step, which read host tensors on a GPU run too, are counted apart), distinct
    (op, input shapes) of the GEMM/attention ops, and on CUDA: kernels, kernel time, copies, and
    runtime calls that synchronise or allocate (``own_device_syncs``: the window's own
    synchronisations, left out)."""
    steps = max(steps, 1)
    events = _kineto_events(prof)
    data_ranges: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    optim_ranges: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    collate_ns = wait_ns = 0
    cpu_ops, device_events = [], []
    runtime: collections.Counter = collections.Counter()
    for e in events:
        name = e.name()
        activity = _activity(e)
        if activity in ("cuda_runtime", "cuda_driver") or (not activity and _on_cpu(e) and name.startswith("cu")):
            runtime[name] += 1  # CUDA runtime / driver calls, made by the host
            continue
        if not _on_cpu(e):
            if "CUDA" in str(e.device_type()):
                device_events.append(e)
            continue
        if name.startswith("Optimizer.step#"):
            optim_ranges[e.start_thread_id()].append((e.start_ns(), e.end_ns()))
        elif name in ("collate", "next_batch"):
            data_ranges[e.start_thread_id()].append((e.start_ns(), e.end_ns()))
            if name == "collate":
                collate_ns += e.duration_ns()
            else:
                wait_ns += e.duration_ns()
        elif name.startswith("aten::"):
            cpu_ops.append(e)

    def within(e: Any, ranges: dict[int, list[tuple[int, int]]]) -> bool:
        start = e.start_ns()
        return any(a <= start <= b for a, b in ranges.get(e.start_thread_id(), ()))

    # top-level aten ops: not inside another aten op on the same thread
    top_level: collections.Counter = collections.Counter()
    by_thread: dict[int, list[Any]] = collections.defaultdict(list)
    for e in cpu_ops:
        by_thread[e.start_thread_id()].append(e)
    for ops in by_thread.values():
        ops.sort(key=lambda e: (e.start_ns(), -e.duration_ns()))
        open_until = -1
        for e in ops:
            if e.start_ns() >= open_until:
                top_level[e.name()] += 1
                open_until = e.end_ns()

    in_data_ops = sum(1 for e in cpu_ops if within(e, data_ranges))
    in_optimizer_ops = sum(1 for e in cpu_ops if within(e, optim_ranges))
    sync_ops: collections.Counter = collections.Counter()
    sync_ops_in_data: collections.Counter = collections.Counter()
    sync_ops_in_optimizer: collections.Counter = collections.Counter()
    gemm_calls: collections.Counter = collections.Counter()
    gemm_shapes: dict[str, set] = collections.defaultdict(set)
    for e in cpu_ops:
        name = e.name()
        if name in SYNC_OPS:
            if within(e, data_ranges):
                sync_ops_in_data[name] += 1
            elif within(e, optim_ranges):
                sync_ops_in_optimizer[name] += 1
            else:
                sync_ops[name] += 1
        if name in GEMM_OPS or name.startswith(GEMM_PREFIXES):
            gemm_calls[name] += 1
            gemm_shapes[name].add(repr(e.shapes()))
    out: dict[str, Any] = {
        "steps": steps,
        "aten_ops_per_step": len(cpu_ops) / steps,
        "top_level_aten_ops_per_step": sum(top_level.values()) / steps,
        "top_level_aten_ops_by_name_per_step": {k: v / steps for k, v in top_level.most_common(20)},
        "aten_ops_in_data_loading_per_step": in_data_ops / steps,
        "aten_ops_in_optimizer_step_per_step": in_optimizer_ops / steps,
        "aten_ops_in_model_and_loss_per_step": (len(cpu_ops) - in_data_ops - in_optimizer_ops) / steps,
        "sync_ops_per_step": sum(sync_ops.values()) / steps,
        "local_scalar_dense_per_step": sync_ops.get("aten::_local_scalar_dense", 0) / steps,
        "sync_ops_by_name_per_step": {k: v / steps for k, v in sorted(sync_ops.items())},
        "sync_ops_in_data_loading_per_step": {k: v / steps for k, v in sorted(sync_ops_in_data.items())},
        "sync_ops_in_optimizer_step_per_step": {k: v / steps for k, v in sorted(sync_ops_in_optimizer.items())},
        "gemm_calls_per_step": sum(gemm_calls.values()) / steps,
        "distinct_gemm_shapes": sum(len(s) for s in gemm_shapes.values()),
        "distinct_gemm_shapes_by_op": {k: len(v) for k, v in sorted(gemm_shapes.items())},
        "gemm_calls_by_op_per_step": {k: v / steps for k, v in sorted(gemm_calls.items())},
        "collate_s_per_step_profiled": collate_ns / 1e9 / steps,
        "next_batch_s_per_step_profiled": wait_ns / 1e9 / steps,
        "host_device_syncs_per_step": sum(sync_ops.values()) / steps,  # CPU: a proxy; CUDA: replaced below
    }
    if device_events or runtime:
        kinds = {_activity(e) for e in device_events}
        if "kernel" in kinds:
            kernels = [e for e in device_events if _activity(e) == "kernel"]
        else:
            kernels = [
                e
                for e in device_events
                if not e.name().startswith(("Memcpy", "Memset")) and "annotation" not in _activity(e)
            ]
        syncs = collections.Counter(
            {k: v for k, v in runtime.items() if k.startswith(SYNC_RUNTIME) and "Async" not in k}
        )
        if own_device_syncs and syncs.get("cudaDeviceSynchronize"):
            syncs["cudaDeviceSynchronize"] -= min(own_device_syncs, syncs["cudaDeviceSynchronize"])
        out.update(
            {
                "kernels_per_step": len(kernels) / steps,
                "kernel_time_s_per_step": sum(e.duration_ns() for e in kernels) / 1e9 / steps,
                **kernel_breakdown(kernels, steps),
                "distinct_kernels": len({e.name() for e in kernels}),
                "memcpy_dtoh_per_step": sum("DtoH" in e.name() for e in device_events) / steps,
                "memcpy_htod_per_step": sum("HtoD" in e.name() for e in device_events) / steps,
                "runtime_sync_calls_per_step": {k: v / steps for k, v in sorted(syncs.items()) if v},
                "runtime_memcpy_async_per_step": sum(
                    v for k, v in runtime.items() if k.startswith("cudaMemcpy") and "Async" in k
                )
                / steps,
                "runtime_alloc_calls_per_step": {
                    k: v / steps for k, v in sorted(runtime.items()) if k.startswith(ALLOC_RUNTIME)
                },
                "kernel_launches_per_step": sum(v for k, v in runtime.items() if "LaunchKernel" in k) / steps,
                "host_device_syncs_per_step": sum(syncs.values()) / steps,
            }
        )
    return out


class ProfileWindow:
    """One profiled window of training steps: torch.profiler (CPU, + CUDA where available, shapes
    recorded), the read-back tally, the data meter and a step clock. Call :meth:`start` at the end of
    the step before the window, :meth:`mark` at each step end inside it and :meth:`stop` at the last."""

    def __init__(self, device: str, repo: Path, data: DataMeter | None = None, trace: Path | None = None):
        self.device = device
        self.clock = StepClock(device)
        self.tally = ReadbackTally(device, repo)
        self.data = data
        self.trace = trace
        self.prof = None
        self.summary: dict[str, Any] = {}

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        self.prof = profile(activities=activities, record_shapes=True)
        self.clock.start()
        self.prof.start()
        self.tally.start()
        if self.data is not None:
            self.data.on = True

    def mark(self) -> None:
        self.clock.mark()

    def stop(self) -> None:
        if self.data is not None:
            self.data.on = False
        self.tally.stop()
        self.clock.stop()  # synchronises: the last step's kernels are in the trace
        self.prof.stop()
        steps = self.clock.steps
        summary: dict[str, Any] = {"host_step_s": self.clock.host_step_seconds(), "steps": steps}
        try:
            summary.update(summarize_profile(self.prof, steps, own_device_syncs=1 if self.device == "cuda" else 0))
        except Exception as exc:  # noqa: BLE001 - a profiler API difference must not lose the timing figures
            summary["profile_error"] = f"{type(exc).__name__}: {exc}"
        summary["readbacks"] = self.tally.summary(steps)
        if self.data is not None:
            summary.update(self.data.summary(steps))
        if self.trace is not None:
            self.trace.parent.mkdir(parents=True, exist_ok=True)
            self.prof.export_chrome_trace(str(self.trace))
            summary["trace"] = str(self.trace)
        self.summary = summary
        self.prof = None


def code_version(repo: Path) -> dict[str, Any]:
    """Which matryoshka_train the figures are of: its directory, the git commit and the files changed
    since (empty when the tree is clean; None where there is no git)."""
    import subprocess

    import matryoshka_train

    out: dict[str, Any] = {"matryoshka_train": str(Path(matryoshka_train.__file__).parent)}
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20, check=True
            ).stdout.strip()

        out["commit"] = git("rev-parse", "HEAD")
        out["changed"] = git("status", "--porcelain", "--", "matryoshka_train", "scripts/bench").splitlines()
    except Exception:  # noqa: BLE001 - no git (a copied tree): the directory says enough
        out["commit"] = out["changed"] = None
    return out


def median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
