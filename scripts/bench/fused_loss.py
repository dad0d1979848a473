"""Benchmark: the Matryoshka loss alone, sentence-transformers' loop over the dims vs ``training.fused_loss``.

Both through :class:`~matryoshka_train.losses.PerDimMatryoshkaLoss` over MultipleNegativesRankingLoss,
on fixed random embeddings (the encoder is replaced by a lookup, so only the loss runs), forward and
backward: aten operations per step (torch profiler) and the median time of ``--steps`` steps, sides
interleaved ``--repeats`` times. The same per-dim terms are checked. Raw figures go to
scripts/bench/results/fused-loss-<device>-<date>.json.

    python scripts/bench/fused_loss.py                  # five dims of 768, batch 128 triplets, CPU
    python scripts/bench/fused_loss.py --device cuda

On a CPU the arithmetic is the cost, and the fused pass does more of it (every dim's product runs
full width); on a GPU whose step is bound by the host, the operation count is. Training figures come
from ``scripts/bench/train.py --ours-variant fusedloss:training.fused_loss=true``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import torch
    from sentence_transformers.sentence_transformer import losses
    from torch.profiler import ProfilerActivity, profile

    from matryoshka_train.losses.per_dim import PerDimMatryoshkaLoss, fused_losses

    model = benchlib.build_model("tiny", Path(tempfile.mkdtemp(prefix="bench-fused-")) / "model", device=args.device)
    dims = benchlib.matryoshka_dims(args.width)
    model.get_embedding_dimension = lambda: args.width  # the loss sees embeddings of this width
    embeddings = torch.randn(3 * args.batch, args.width, device=args.device)
    features = [{"input_ids": torch.zeros(args.batch, 4, dtype=torch.long, device=args.device)} for _ in range(3)]
    loss = PerDimMatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), dims)

    def step() -> dict:
        leaf, taken = embeddings.clone().requires_grad_(), [0]

        def lookup(f: dict) -> dict:  # the encoder's place: each column's rows of the fixed embeddings
            n = f["input_ids"].shape[0]
            start = taken[0] % len(leaf)
            taken[0] += n
            return {"sentence_embedding": leaf[start:start + n]}

        model.forward = lookup
        try:
            out = loss(features, None)
            sum(out.values()).backward()
        finally:
            del model.forward
        if args.device == "cuda":
            torch.cuda.synchronize()
        return {k: float(v.detach()) for k, v in out.items()}

    results: dict = {side: {"ms": []} for side in ("loop", "fused")}
    for _ in range(args.repeats):
        for side in results:
            with fused_losses([loss], side == "fused", echo=print):
                results[side]["terms"] = step()
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    step()
                results[side]["aten_ops"] = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
                times = []
                for _ in range(args.steps):
                    began = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - began)
                results[side]["ms"].append(1000 * sorted(times)[len(times) // 2])
    same = all(abs(results["loop"]["terms"][k] - v) <= 1e-4 * max(1.0, abs(v))
               for k, v in results["fused"]["terms"].items())
    for side, r in results.items():
        print(f"{side:>5}: {r['aten_ops']} aten ops per step, median ms per repeat "
              + ", ".join(f"{ms:.2f}" for ms in r["ms"]))
    ratio = min(results["loop"]["ms"]) / min(results["fused"]["ms"])
    print(f"fused vs loop: {results['loop']['aten_ops'] / results['fused']['aten_ops']:.2f}x fewer ops, "
          f"{ratio:.2f}x the speed (best repeat); same per-dim terms: {'PASS' if same else 'FAIL'}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fused-loss-{args.device}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps({
        "benchmark": "fused_loss", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "dims": dims,
        "versions": {"torch": torch.__version__}, "code": benchlib.code_version(REPO), "results": results,
        "same_terms": same,
    }, indent=1))
    print(f"raw results: {path}")
    if not same:
        sys.exit("the fused terms differ from the loop's")


if __name__ == "__main__":
    main()
