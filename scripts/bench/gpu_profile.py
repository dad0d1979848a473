"""GPU profile: tokens/s, peak memory and MFU of one training step on encoders built from a config
(random weights: speed does not depend on them), for several forward variants.

Profiles (every one sized to fit an 80 GB H100; the loss is MatryoshkaLoss over the inner loss
named, on (anchor, positive, negative), bf16 autocast on CUDA; lengths in tokens, one per word):
  bert-base         BERT-base size (12 x 768), plain MultipleNegativesRankingLoss, batch 64, 16-510 tokens.
                    Batch 250 does not fit (it ran out of memory on an H100, issue #14): sentence-transformers
                    runs the anchors (250 rows) and the merged positives + negatives (500 rows) with
                    gradients, up to 512 tokens wide: about 34 x tokens x hidden bytes of bf16 activations
                    per layer (SDPA, no materialised attention scores) = 34 x 384k x 768 x 12 layers
                    ~ 120 GB. At batch 64 (192 rows x 512) the same estimate is ~31 GB, plus ~2 GB of
                    fp32 weights, gradients and Adam state.
  bert-base-cached  the same model and texts at batch 250 with CachedMultipleNegativesRankingLoss,
                    mini-batch 64: gradients are kept for one mini-batch of 64 rows x 512 at a time,
                    ~34 x 32.8k x 768 x 12 ~ 10 GB of activations + ~2 GB of model state.
  xlmr-large        XLM-R-large size (24 x 1024, 250k vocab, ~560M parameters), batch 2048,
                    CachedMultipleNegativesRankingLoss mini-batch 64, 16-256 tokens: model state
                    16 B x 560M ~ 9 GB (fp32 weights, gradients, Adam m and v), activations of one
                    mini-batch 34 x 64 x 258 x 1024 x 24 ~ 14 GB, the cached embeddings (6144 x 1024)
                    negligible: ~24 GB in all. A step at batch 2048 (6,144 texts) takes ~20 s on an H200:
                    gpu_suite.sh runs it at --batch 512.
  tiny              a 2-layer model on the CPU: checks that this script runs (no figures worth keeping)
  tiny-cached       the same with CachedMultipleNegativesRankingLoss (use --batch and --mini-batch to get
                    several mini-batches): checks the Cached path runs
The memory figures are estimates; the measured peak of each variant is in the output.

bf16 on CUDA as in training: the model's forward is wrapped in bf16 autocast with its floating outputs
cast back to fp32, as accelerate's prepare_model does in a SentenceTransformerTrainer run, and the
loss runs in an autocast block too. The Cached losses recompute each mini-batch's embeddings with
gradients inside `loss.backward()` (a backward hook), outside that block. Without the wrapper that
recompute and its backward ran in fp32 (the packed variant with padded attention): the H200 runs 1-4
(2026-11-28), and the H100 run 1 before them, recomputed in fp32, so their bert-base-cached figures
are not those of bf16 training. The CUDA allocator: like `mtrain run`, main() sets
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before torch loads unless an allocator setting is
in the environment; settings.cuda_allocator records what ran.

Variants (--variants, comma-separated; all by default):
  plain       the model's own forward, each batch padded to its longest text
  sorted      our sorted-chunk forward as configured by default (--chunk-tokens, the default chunk floor)
  sorted-gpu  sorted-chunk forward with GPU-sized chunks: floor --chunk-min-tokens, at most --gpu-chunk-tokens
  pad64       the plain forward with every batch's width padded up to a multiple of 64
  sorted-gpu-pad64  sorted-gpu on batches padded to 64, each chunk's width rounded up to 64 too (few
              distinct widths and less padding; `mtrain run` with sorted_forward on CUDA does this)
  packed      our packed forward (training.packed_forward): position-wise layers on real tokens only,
              attention by flash attention's varlen kernel on CUDA in bf16 (padded attention elsewhere);
              the result's "packed" says which ran
  pad64-compile, packed-compile  the same with each encoder layer compiled (training.compile_layers:
              torch.compile, dynamic shapes, fusing the element-wise kernels between the matrix
              products); the compile time falls in the warm-up steps (`warmup_s`)
  packed-merged, packed-merged-compile  packed (and compiled) with all columns in one encoder call
              (training.merge_columns) instead of sentence-transformers' anchors-apart two
Timing adds no host-device synchronisation to the steps: batches are tokenized (and pinned) before
the timed window, token counts come from the tokenizer's output on the host, each step end records
a CUDA event, and the window synchronises only at its start and end. The sorted variants get each
batch's row lengths on the host as `mtrain run` does (when matryoshka_train has that mechanism).

MFU counts real (non-pad) tokens only: 6 x non-embedding parameters + 12 x layers x hidden x
sequence length FLOPs per token for a training step, against --peak-tflops (989: H100 dense bf16).
The Cached loss's extra no-grad forward is not counted (it is recomputation, not model work).
--profile-steps N adds N profiled steps per variant (kernels and kernel time per step, syncs,
distinct GEMM shapes; see benchlib.summarize_profile). Needs no hub and no `datasets`.

    python scripts/bench/gpu_profile.py --profile bert-base --steps 10
    python scripts/bench/gpu_profile.py --profile tiny          # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gc
import inspect
import json
import os
import platform
import random
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402 - needs the path above

PROFILES = {
    "bert-base": {"model": "bert-base", "batch": 64, "columns": 3, "min_len": 16, "max_len": 510, "cached": False},
    "bert-base-cached": {
        "model": "bert-base",
        "batch": 250,
        "columns": 3,
        "min_len": 16,
        "max_len": 510,
        "cached": True,
    },
    "xlmr-large": {"model": "xlmr-large", "batch": 2048, "columns": 3, "min_len": 16, "max_len": 256, "cached": True},
    "tiny": {"model": "tiny", "batch": 8, "columns": 3, "min_len": 4, "max_len": 60, "cached": False},
    "tiny-cached": {"model": "tiny", "batch": 8, "columns": 3, "min_len": 4, "max_len": 60, "cached": True},
}
VARIANTS = ("plain", "sorted", "sorted-gpu", "pad64", "sorted-gpu-pad64", "packed", "pad64-compile", "packed-compile",
            "packed-merged", "packed-merged-compile")


def texts(p: dict, steps: int, seed: int) -> list[list[list[str]]]:
    """Per step, per column, the batch's texts (min_len..max_len words, one token each, + [CLS]/[SEP])."""
    rng = random.Random(seed)
    return [
        [[benchlib.word_text(rng, p["min_len"], p["max_len"]) for _ in range(p["batch"])] for _ in range(p["columns"])]
        for _ in range(steps)
    ]


def pad_to_multiple(features: dict, multiple: int, pad_id: int = 0) -> dict:
    import torch

    width = features["input_ids"].shape[1]
    target = -(-width // multiple) * multiple
    if target == width:
        return features
    out = dict(features)
    for key, value in features.items():
        if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[1] == width:
            fill = pad_id if key == "input_ids" else 0
            out[key] = torch.nn.functional.pad(value, (0, target - width), value=fill)
    return out


def install_sorted(
    model: Any, max_tokens: int, min_tokens: int | None, round_to: int | None = None
) -> tuple[Any, str, Any]:
    """Install our sorted forward; min_tokens through whatever this matryoshka_train offers.
    Returns (patched, how min_tokens was passed, undo for a plan_chunks patch or None)."""
    from matryoshka_train.models import sorted_forward as sf

    if min_tokens is None:
        return sf.install(model, max_tokens), "default", None
    if round_to and "round_to" in inspect.signature(sf.install).parameters:
        return sf.install(model, max_tokens, min_tokens=min_tokens, round_to=round_to), "install(round_to=)", None
    if "min_tokens" in inspect.signature(sf.install).parameters:
        return sf.install(model, max_tokens, min_tokens=min_tokens), "install(min_tokens=)", None
    original = sf.plan_chunks  # older code: the floor is plan_chunks' keyword default
    sf.plan_chunks = functools.partial(original, min_tokens=min_tokens)
    return sf.install(model, max_tokens), "plan_chunks patched", lambda: setattr(sf, "plan_chunks", original)


def host_lengths_context():
    """`mtrain run`'s way of handing the sorted forward each batch's row lengths from the host (so it
    never reads the device: matryoshka_train.models.host_reads, or sorted_forward in older code), when this
    matryoshka_train has it; else a no-op. Returns (context, attach)."""
    import importlib

    for module_name, context_name in (
        ("matryoshka_train.models.host_reads", "no_host_reads"),
        ("matryoshka_train.models.sorted_forward", "host_lengths"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if all(hasattr(module, name) for name in (context_name, "carry_host_lengths", "HOST_LENGTHS")):
            holder = types.SimpleNamespace(data_collator=None, _prepare_inputs=lambda inputs: inputs)

            def attach(features: dict, lengths: Any, module: Any = module) -> dict:
                return module.carry_host_lengths({**features, module.HOST_LENGTHS: {"attention_mask": lengths}})

            return getattr(module, context_name)(holder), attach
    return contextlib.nullcontext(), None


def autocast_forward(model: Any, device_type: str, dtype: Any) -> None:
    """Run ``model``'s forward under autocast wherever it is called from, its bf16/fp16 outputs cast
    back to fp32: what accelerate's ``prepare_model`` does to the model of a mixed-precision trainer
    run. A Cached loss's recompute in ``backward()`` then runs in ``dtype`` as in training; an
    autocast block around the loss (``step``) nests harmlessly. Undo: ``del model.forward``."""
    import torch  # why: loaded lazily, as in the rest of this script (main sets the allocator before it)

    forward = model.forward

    @functools.wraps(forward)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=device_type, dtype=dtype):
            out = forward(*args, **kwargs)
        low = (torch.float16, torch.bfloat16)
        if isinstance(out, dict):
            return type(out)(
                {k: v.float() if isinstance(v, torch.Tensor) and v.dtype in low else v for k, v in out.items()}
            )
        return out.float() if isinstance(out, torch.Tensor) and out.dtype in low else out

    model.forward = wrapped


def profile_variant(p: dict, args, variant: str, hf_dir: Path, batches: list, device: str) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses, modules

    from matryoshka_train.models import compiled_layers, merged_columns, packed_forward

    cuda = device == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    spec = benchlib.MODELS[p["model"]]
    transformer = modules.Transformer(str(hf_dir), max_seq_length=benchlib.MAX_POSITIONS)
    model = SentenceTransformer(
        modules=[transformer, modules.Pooling(spec["hidden"], pooling_mode="mean")], device=device
    )
    inner = (
        losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=args.mini_batch)
        if p["cached"]
        else losses.MultipleNegativesRankingLoss(model)
    )
    loss = losses.MatryoshkaLoss(model, inner, benchlib.matryoshka_dims(spec["hidden"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    if cuda:  # every pass in bf16, the Cached losses' recompute in backward() too (module docstring)
        autocast_forward(model, "cuda", torch.bfloat16)
    patched, min_via, undo = None, None, None
    base = variant.removesuffix("-compile").removesuffix("-merged")
    merge = "-merged" in variant
    if variant == "sorted":
        patched, min_via, undo = install_sorted(model, args.chunk_tokens, None)
    elif variant == "sorted-gpu":
        patched, min_via, undo = install_sorted(model, args.gpu_chunk_tokens, args.chunk_min_tokens)
    elif variant == "sorted-gpu-pad64":
        patched, min_via, undo = install_sorted(model, args.gpu_chunk_tokens, args.chunk_min_tokens, round_to=64)
    packed = None
    if base == "packed":
        packed = packed_forward.install(model)
        if packed is None:
            raise RuntimeError(f"packed forward: not for this model ({packed_forward.why_not(model)})")
    compiled = []
    if variant.endswith("-compile"):
        compiled = compiled_layers.install(model)
        if not compiled:
            raise RuntimeError("compile_layers: no encoder layers found")
    context, attach = host_lengths_context() if patched is not None or packed is not None else (None, None)
    params = benchlib.non_embedding_params(model)
    layers, hidden = benchlib.encoder_shape(model)
    counter = benchlib.TokenCounter(model[0])

    def step(features_host: list[dict], lengths: list) -> None:
        features = []
        for f, n in zip(features_host, lengths):
            moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in f.items()}
            features.append(attach(moved, n) if attach is not None else moved)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
            value = loss(features, None)
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    feats = [[pad_to_multiple(f, 64) if base.endswith("pad64") else f for f in b["features"]] for b in batches]
    if cuda:
        feats = [
            [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in f.items()} for f in b] for b in feats
        ]
    lengths = [b["lengths"] for b in batches]
    warm, timed = range(args.warmup), range(args.warmup, args.warmup + args.steps)
    profiled = range(args.warmup + args.steps, len(batches))
    clock = benchlib.StepClock(device)
    window = benchlib.ProfileWindow(device, REPO) if args.profile_steps else None
    try:
        with (
            context if context is not None else contextlib.nullcontext(),
            merged_columns.merged() if merge else contextlib.nullcontext(),
        ):
            if cuda:
                torch.cuda.synchronize()
            began = time.perf_counter()
            for i in warm:
                step(feats[i], lengths[i])
            if cuda:
                torch.cuda.synchronize()
            warmup_s = time.perf_counter() - began
            counter.on = True
            clock.start()
            for n, i in enumerate(timed):
                step(feats[i], lengths[i])
                if n == len(timed) - 1:
                    clock.stop()
                else:
                    clock.mark()
            counter.on = False
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            peak_reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
            if window is not None:
                window.start()
                for n, i in enumerate(profiled):
                    step(feats[i], lengths[i])
                    if n == len(profiled) - 1:
                        window.stop()
                    else:
                        window.mark()
    finally:
        counter.remove()
        if patched is not None:
            from matryoshka_train.models import sorted_forward as sf

            sf.uninstall(model, patched)
        if packed is not None:
            packed_forward.uninstall(model, packed)
        if compiled:
            compiled_layers.uninstall(compiled)
        if undo is not None:
            undo()
    seconds = clock.seconds
    real = sum(float(n.sum()) for i in timed for n in lengths[i])
    sq = sum(float((n.astype("float64") ** 2).sum()) for i in timed for n in lengths[i])
    flops = benchlib.train_flops(params, layers, hidden, real, sq)
    run_tokens = real if packed is not None else counter.run_tokens  # packed: the position-wise layers ran real tokens
    result = {
        "variant": variant,
        "device": device,
        "timed_steps": args.steps,
        "seconds": seconds,
        "warmup_steps": args.warmup,
        "warmup_s": warmup_s,
        "real_tokens_per_s": real / seconds,
        "run_tokens_per_s": run_tokens / seconds,
        "pad_share": 1 - real / run_tokens if run_tokens else None,
        "samples_per_s": args.steps * p["batch"] / seconds,
        "median_step_s": benchlib.median(clock.step_seconds()),
        "step_s": [round(x, 5) for x in clock.step_seconds()],
        "host_step_s": [round(x, 5) for x in clock.host_step_seconds()],
        "model_tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / (args.peak_tflops * 1e12),
        "peak_memory_gib": peak,
        "peak_reserved_gib": peak_reserved,
        "encoder_calls_per_step": counter.calls / args.steps,
        "distinct_encoder_shapes": len(set(counter.shapes)),
        "non_embedding_params": params,
        "compiled_layers": len(compiled),
        "merged_columns": merge,
        "cached_loss": p["cached"],
        "forward_autocast": "bf16" if cuda else None,  # the model's forward wrapped as accelerate does
        "chunking": (
            {
                "max_tokens": args.chunk_tokens if variant == "sorted" else args.gpu_chunk_tokens,
                "min_tokens": args.chunk_min_tokens if variant.startswith("sorted-gpu") else "default",
                "min_tokens_passed_by": min_via,
                "host_lengths": attach is not None,
                "forwards_without_host_lengths": getattr(patched, "uncarried", None),
                "pad_share_run": (1 - patched.real_tokens / patched.run_tokens) if patched.run_tokens else None,
            }
            if patched is not None
            else None
        ),
        "packed": (
            {"attention": packed.attention, "real_tokens": packed.real_tokens, "padded_tokens": packed.padded_tokens,
             "forwards_without_host_lengths": packed.uncarried}
            if packed is not None
            else None
        ),
        "profile": window.summary if window is not None else None,
    }
    return result  # the model, optimizer and batches go with this frame; the caller frees the memory


def shape_probe(p: dict, args, hf_dir: Path, device: str) -> dict:
    """First-use cost of a new input shape: forward + backward of the bare encoder at --shape-probe
    distinct widths (64 rows each), every width twice in this process. If the first pass is much
    slower than the second, each new shape pays a one-off (cuBLAS/attention kernel choice, allocator
    growth): a run whose batches keep bringing new widths (the sorted forward's chunks) pays it every
    step until the shapes repeat. Synchronises around each call: it measures latency, not throughput."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    cuda = device == "cuda"
    spec = benchlib.MODELS[p["model"]]
    transformer = modules.Transformer(str(hf_dir), max_seq_length=benchlib.MAX_POSITIONS)
    model = SentenceTransformer(
        modules=[transformer, modules.Pooling(spec["hidden"], pooling_mode="mean")], device=device
    )
    rows = min(p["batch"], 64)
    low, high = p["min_len"] + 2, p["max_len"] + 2
    count = min(args.shape_probe, high - low + 1)
    widths = sorted({low + round(i * (high - low) / max(count - 1, 1)) for i in range(count)})
    generator = torch.Generator().manual_seed(args.seed)

    def call(width: int) -> float:
        ids = torch.randint(4, benchlib.WORDS_IN_TOKENIZER, (rows, width), generator=generator)
        features = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
            out = model(features)["sentence_embedding"].float().pow(2).mean()
        out.backward()
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - began

    call(widths[0])  # the model's own first call is not a shape's cost
    passes, allocs = [], []
    for _ in range(2):
        before = benchlib.cuda_memory_counters() if cuda else None
        passes.append([call(w) for w in widths])
        if cuda:
            after = benchlib.cuda_memory_counters()
            allocs.append({k: after[k] - before[k] for k in ("num_device_alloc", "num_alloc_retries")})
    first, second = passes
    return {
        "rows": rows,
        "widths": widths,
        "first_pass_s": [round(x, 5) for x in first],
        "second_pass_s": [round(x, 5) for x in second],
        "first_pass_total_s": sum(first),
        "second_pass_total_s": sum(second),
        "first_over_second": sum(first) / max(sum(second), 1e-9),
        "allocator_per_pass": allocs or None,
    }


def main() -> None:
    allocator_settings = benchlib.set_cuda_allocator()  # first: before torch loads
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="bert-base")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--profile-steps", type=int, default=0, help="profiled steps per variant after the timed ones")
    parser.add_argument("--batch", type=int, default=None, help="override the profile's batch size")
    parser.add_argument(
        "--shape-probe",
        type=int,
        default=0,
        metavar="N",
        help="also time forward+backward at N distinct widths, twice each (first-use cost of a shape)",
    )
    parser.add_argument(
        "--mini-batch", type=int, default=64, help="CachedMNRL mini-batch (the -cached profiles, xlmr-large)"
    )
    parser.add_argument(
        "--chunk-tokens", type=int, default=8192, help="sorted: most padded tokens per chunk (the config default)"
    )
    parser.add_argument("--gpu-chunk-tokens", type=int, default=65536, help="sorted-gpu: most padded tokens per chunk")
    parser.add_argument(
        "--chunk-min-tokens", type=int, default=16384, help="sorted-gpu: fewest padded tokens before a chunk may close"
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="")
    parser.add_argument(
        "--sdpa", default="", help="allow only these attention kernels (comma-separated: flash,efficient,cudnn,math)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "bench" / "results")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.steps < 1 or args.warmup < 0:
        parser.error("need --steps >= 1 and --warmup >= 0")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    sdpa = benchlib.restrict_sdpa(args.sdpa)
    p = dict(PROFILES[args.profile])
    if args.batch:
        p["batch"] = args.batch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    benchlib.device_warmup(device)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        built = benchlib.build_model(p["model"], Path(tmp), "cpu", benchlib.MAX_POSITIONS, args.seed)
        tokenizer_model = built
        batches = []
        for step_texts in texts(p, args.warmup + args.steps + args.profile_steps, args.seed):
            features = [tokenizer_model.preprocess(column) for column in step_texts]
            batches.append({"features": features, "lengths": [f["attention_mask"].sum(1).numpy() for f in features]})
        del built, tokenizer_model
        setup_s = time.perf_counter() - began
        failed: dict[str, str] = {}
        for variant in variants:
            try:
                r = profile_variant(p, args, variant, Path(tmp) / "hf", batches, device)
            except Exception as exc:  # noqa: BLE001 - one variant failing (a kernel, memory) must not lose the others
                failed[variant] = f"{type(exc).__name__}: {exc}"[:2000]
                print(f"{args.profile} {variant}: FAILED {failed[variant].splitlines()[0][:200]}", flush=True)
                continue
            finally:
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
            runs.append(r)
            mem = f"{r['peak_memory_gib']:.1f} GiB peak" if r["peak_memory_gib"] is not None else "CPU"
            extra = ""
            if r["profile"]:
                q = r["profile"]
                extra = (
                    f" · profiled: {q.get('distinct_gemm_shapes', 0)} distinct GEMM shapes, "
                    f"{q.get('host_device_syncs_per_step', 0):.1f} syncs/step"
                    + (f", {q['kernels_per_step']:.0f} kernels/step" if "kernels_per_step" in q else "")
                )
            print(
                f"{args.profile} {variant}: {r['real_tokens_per_s']:,.0f} "
                f"real tokens/s, {r['samples_per_s']:.1f} samples/s, "
                f"{r['model_tflops_per_s']:.1f} TFLOP/s, MFU {100 * r['mfu']:.1f}%, {mem}, "
                f"median step {r['median_step_s']:.3f}s, warm-up {r['warmup_s']:.1f}s{extra}",
                flush=True,
            )
        probe = None
        if args.shape_probe:
            probe = shape_probe(p, args, Path(tmp) / "hf", device)
            gc.collect()
            print(
                f"shape probe: {len(probe['widths'])} widths x {probe['rows']} "
                f"rows, first pass {probe['first_pass_total_s']:.2f}s, "
                f"second {probe['second_pass_total_s']:.2f}s ({probe['first_over_second']:.2f}x)",
                flush=True,
            )
    base = next((r for r in runs if r["variant"] == "plain"), None)
    if base is not None:
        for r in runs:
            r["vs_plain_real_tokens_per_s"] = r["real_tokens_per_s"] / base["real_tokens_per_s"]
        print(
            "vs plain (real tokens/s): "
            + ", ".join(f"{r['variant']} {r['vs_plain_real_tokens_per_s']:.2f}x" for r in runs)
        )
    settings = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **p,
        "model_spec": benchlib.MODELS[p["model"]],
        "sdpa_enabled": sdpa,
        **allocator_settings,
    }
    record = {
        "benchmark": "gpu_profile",
        "profile": args.profile,
        "settings": settings,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "setup_s": setup_s,
        "code": benchlib.code_version(REPO),
        "machine": {
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "cpus": os.cpu_count(),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "runs": runs,
        "failed_variants": failed,
        "shape_probe": probe,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = (
        args.out
        / f"gpu-{args.profile}{'-' + args.label if args.label else ''}-{device}-{dt.date.today().isoformat()}.json"
    )
    path.write_text(json.dumps(record, indent=2))
    print(f"raw results: {path}")
    if failed:
        sys.exit(f"failed variants (in the JSON too): {', '.join(failed)}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
