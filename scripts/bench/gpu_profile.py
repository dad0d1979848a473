"""GPU profile: tokens/s, peak memory and MFU of our training step on encoder models built from a
config (random weights: speed does not depend on them), with and without the sorted-chunk forward.

Profiles (issue #7):
  bert-base   BERT-base size (12 x 768), batch 250, bf16, texts of 16-510 tokens,
              MatryoshkaLoss(MultipleNegativesRankingLoss) over (anchor, positive, negative)
  xlmr-large  XLM-R-large size (24 x 1024, 250k vocab), batch 2048, bf16,
              MatryoshkaLoss(CachedMultipleNegativesRankingLoss, mini-batch 64), texts of 16-256 tokens
  tiny        a 2-layer model on the CPU: checks that this script runs (no figures worth keeping)

MFU counts real (non-pad) tokens only: 6 x non-embedding parameters + 12 x layers x hidden x
sequence length FLOPs per token for a training step, against --peak-tflops (989: H100 dense bf16).
The Cached loss's extra no-grad forward is not counted (it is recomputation, not model work).
Needs no hub and no `datasets`: the tokenizer is a word-level one built here, one token per word.

    python scripts/bench/gpu_profile.py --profile bert-base --steps 10
    python scripts/bench/gpu_profile.py --profile tiny          # CPU smoke run
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PROFILES = {
    "bert-base": {"arch": "bert", "layers": 12, "hidden": 768, "heads": 12, "ffn": 3072, "vocab": 30522,
                  "batch": 250, "columns": 3, "min_len": 16, "max_len": 510, "cached": False},
    "xlmr-large": {"arch": "xlm-roberta", "layers": 24, "hidden": 1024, "heads": 16, "ffn": 4096, "vocab": 250002,
                   "batch": 2048, "columns": 3, "min_len": 16, "max_len": 256, "cached": True},
    "tiny": {"arch": "bert", "layers": 2, "hidden": 64, "heads": 4, "ffn": 128, "vocab": 4000,
             "batch": 8, "columns": 3, "min_len": 4, "max_len": 60, "cached": False},
}


def build_model(p: dict, root: Path, device: str):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(4000 - 4)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=512,
    )
    config = AutoConfig.for_model(
        p["arch"],
        vocab_size=p["vocab"],
        hidden_size=p["hidden"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        intermediate_size=p["ffn"],
        max_position_embeddings=514,
        pad_token_id=0,
    )
    AutoModel.from_config(config).save_pretrained(root / "hf")
    fast.save_pretrained(root / "hf")
    transformer = modules.Transformer(str(root / "hf"), max_seq_length=512)
    return SentenceTransformer(modules=[transformer, modules.Pooling(p["hidden"], pooling_mode="mean")], device=device)


def batches(p: dict, steps: int, seed: int):
    rng = random.Random(seed)
    for _ in range(steps):
        yield [
            [
                " ".join(f"w{rng.randrange(4, 4000)}" for _ in range(rng.randint(p["min_len"], p["max_len"])))
                for _ in range(p["batch"])
            ]
            for _ in range(p["columns"])
        ]


def profile(p: dict, args, sorted_forward: bool) -> dict:
    import torch
    from sentence_transformers.sentence_transformer import losses

    from matryoshka_train.models import sorted_forward as sf

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(p, Path(tmp), device)
    inner = (
        losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=args.mini_batch)
        if p["cached"]
        else losses.MultipleNegativesRankingLoss(model)
    )
    dims = [d for d in (p["hidden"], p["hidden"] // 2, p["hidden"] // 4, p["hidden"] // 8) if d > 0]
    loss = losses.MatryoshkaLoss(model, inner, dims)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    patched = sf.install(model, args.chunk_tokens) if sorted_forward else None
    n_params = sum(x.numel() for name, x in model.named_parameters() if "embeddings" not in name)
    real_tokens = seconds = 0.0
    flops = 0.0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step, texts in enumerate(batches(p, args.warmup + args.steps, args.seed)):
        features = [model.preprocess(column) for column in texts]
        features = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in f.items()} for f in features]
        lengths = [f["attention_mask"].sum(1) for f in features]
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            value = loss(features, None)
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            seconds += time.perf_counter() - began
            tokens = float(sum(x.sum() for x in lengths))
            real_tokens += tokens
            # 6N per token, plus attention: 12 * layers * hidden * length per token (sum of length^2 per row)
            flops += 6 * n_params * tokens + 12 * p["layers"] * p["hidden"] * float(
                sum((x.float() ** 2).sum() for x in lengths)
            )
    sf.uninstall(model, patched)
    result = {
        "sorted_forward": sorted_forward,
        "device": device,
        "timed_steps": args.steps,
        "seconds": seconds,
        "real_tokens_per_s": real_tokens / seconds,
        "samples_per_s": args.steps * p["batch"] / seconds,
        "model_tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / (args.peak_tflops * 1e12),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "non_embedding_params": n_params,
    }
    del model, optimizer, loss
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="bert-base")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mini-batch", type=int, default=64, help="CachedMNRL mini-batch (xlmr-large)")
    parser.add_argument("--chunk-tokens", type=int, default=32768, help="sorted forward: padded tokens per chunk")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100: 989)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "bench" / "results")
    args = parser.parse_args()
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    p = PROFILES[args.profile]
    runs = []
    for sorted_forward in (False, True):
        r = profile(p, args, sorted_forward)
        runs.append(r)
        mem = f"{r['peak_memory_gib']:.1f} GiB peak" if r["peak_memory_gib"] is not None else "CPU"
        print(
            f"{args.profile} sorted_forward={sorted_forward}: {r['real_tokens_per_s']:,.0f} real tokens/s, "
            f"{r['samples_per_s']:.1f} samples/s, {r['model_tflops_per_s']:.1f} "
            f"TFLOP/s, MFU {100 * r['mfu']:.1f}%, {mem}",
            flush=True,
        )
    print(f"ratio sorted/plain: {runs[1]['real_tokens_per_s'] / runs[0]['real_tokens_per_s']:.2f}x real tokens/s")
    record = {
        "benchmark": "gpu_profile",
        "profile": args.profile,
        "settings": p,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-{args.profile}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"raw results: {path}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
