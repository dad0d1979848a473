"""Ablation behind the quickstart's default: how the Matryoshka loss is combined over dims, and
what anchoring to the base model (and the optional levers) does at every dim.

Each variant is the shipped quickstart (configs/quickstart.yaml) run through `mtrain run` in its own
process, with --set overrides that fully specify the variant. Every variant is scored at every dim
on (a) the quickstart's held-out triplets and (b) data/sts-independent, 360 scored pairs written
independently of the training data. Writes docs/quality.md (table + verdict), docs/quality.png and
docs/quality/ablation.json.

    python scripts/quality/ablation.py             # all variants (~15 min on 2 CPU cores)
    python scripts/quality/ablation.py --only sum mean
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TRIPLET, STS = "quickstart-heldout", "sts-independent"
SMALL = ("64", "32")  # the dims the target speaks of (every dim <= 64)

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "sum": ("dims summed (the usual script)", ["matryoshka.reduction=sum", "anchor.weight=0"]),
    "mean": ("dims averaged", ["matryoshka.reduction=mean", "anchor.weight=0"]),
    "mean+anchor2": ("averaged + anchor, weight 2", ["matryoshka.reduction=mean", "anchor.weight=2"]),
    "mean+anchor10": ("averaged + anchor, weight 10", ["matryoshka.reduction=mean", "anchor.weight=10"]),
    "mean+anchor50": ("averaged + anchor, weight 50", ["matryoshka.reduction=mean", "anchor.weight=50"]),
    "mean+anchor10+freeze-emb": (
        "averaged + anchor 10 + frozen embeddings",
        ["matryoshka.reduction=mean", "anchor.weight=10", "training.freeze_embeddings=true"],
    ),
    "mean+anchor10+llrd0.8": (
        "averaged + anchor 10 + layer-wise LR decay 0.8",
        ["matryoshka.reduction=mean", "anchor.weight=10", "training.layerwise_lr_decay=0.8"],
    ),
}


def run_variant(name: str, overrides: list[str], out_root: Path, reuse: bool = False) -> dict:
    out = out_root / name
    if reuse and (out / "results.json").is_file():
        print(f"[{name}] reusing {out / 'results.json'}", flush=True)
        return json.loads((out / "results.json").read_text())
    cmd = [sys.executable, "-m", "matryoshka_train", "run", "configs/quickstart.yaml", "--overwrite",
           "--set", f"training.output_dir={out}", *[x for o in overrides for x in ("--set", o)]]
    print(f"[{name}] {' '.join(cmd[2:])}", flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"[{name}] failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())


def primary(results: dict, evaluator: str, phase: str) -> dict[str, float]:
    metric = results["primary_metric"][evaluator]
    return {dim: m[metric] for dim, m in results[phase][evaluator].items()}


def verdict(base: dict, row: dict) -> tuple[bool, str]:
    """The issue's target: beat the base at every dim <= 64 on both sets, full size within 0.5 points."""
    misses = []
    for ev in (TRIPLET, STS):
        for dim in SMALL:
            if row[ev][dim] <= base[ev][dim]:
                misses.append(f"{ev}@{dim}")
        if row[ev]["384"] < base[ev]["384"] - 0.005:
            misses.append(f"{ev}@384 ({100 * (row[ev]['384'] - base[ev]['384']):+.2f})")
    return (not misses, "meets the target" if not misses else "misses: " + ", ".join(misses))


def small_dim_score(base: dict, row: dict) -> float:
    return sum(row[ev][d] - base[ev][d] for ev in (TRIPLET, STS) for d in SMALL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS))
    parser.add_argument("--out", default="outputs/ablation")
    parser.add_argument("--reuse", action="store_true", help="reuse a variant's results.json left by an earlier run")
    parser.add_argument("--from-json", action="store_true", help="re-render the docs from docs/quality/ablation.json")
    args = parser.parse_args()
    saved = DOCS / "quality" / "ablation.json"

    if args.from_json:
        stored = json.loads(saved.read_text())
        started = dt.datetime.fromisoformat(stored["date"])
        raw = stored["results"]
        names = list(raw)
    else:
        names = args.only or list(VARIANTS)
        started = dt.datetime.now(dt.timezone.utc)
        raw = {name: run_variant(name, VARIANTS[name][1], ROOT / args.out, args.reuse) for name in names}
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(
            {"date": started.isoformat(timespec="seconds"), "variants": {n: VARIANTS[n] for n in names},
             "results": raw}, indent=1))
    rows = {name: {ev: primary(raw[name], ev, "after") for ev in (TRIPLET, STS)} for name in names}
    base = {ev: primary(raw[names[0]], ev, "before") for ev in (TRIPLET, STS)}
    dims = [str(d) for d in raw[names[0]]["dims"]]
    plot(base, rows, dims)
    write_markdown(base, rows, dims, names, raw, started)
    print((DOCS / "quality.md").read_text())


def plot(base: dict, rows: dict, dims: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    xs = [int(d) for d in dims]
    for ax, ev, label in ((axes[0], TRIPLET, "triplet accuracy (held-out quickstart split)"),
                          (axes[1], STS, "Spearman ×100 (independent STS pairs)")):
        scale = 100
        ax.plot(xs, [scale * base[ev][d] for d in dims], "k--", marker="o", label="base model, truncated")
        for name, row in rows.items():
            ax.plot(xs, [scale * row[ev][d] for d in dims], marker=".", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("embedding dimensions kept (log scale)")
        ax.set_ylabel(label)
        ax.set_title(f"{ev}: quality vs. truncation dim")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(DOCS / "quality.png", dpi=110)


def write_markdown(base: dict, rows: dict, dims: list[str], names: list[str], raw: dict, started: dt.datetime) -> None:
    def cells(values: dict) -> str:
        return " | ".join(f"{100 * values[d]:.2f}" for d in dims)

    heads = " | ".join(f"(a) {d}" for d in dims) + " | " + " | ".join(f"(b) {d}" for d in dims)
    lines = [
        "# Quality: the Matryoshka default, measured",
        "",
        "<!-- generated by scripts/quality/ablation.py: rerun it rather than editing the numbers -->",
        "",
        (f"Run on {started:%Y-%m-%d} with `python scripts/quality/ablation.py` "
         f"({platform.machine()}, {os.cpu_count()} CPU cores, fp32). Each variant is `configs/quickstart.yaml` "
         "(all-MiniLM-L6-v2, 1,048 triplets, MNRL, batch 32, lr 2e-5, 1 epoch, dims 384/256/128/64/32) "
         "with the overrides listed. Scores ×100. (a) is the quickstart's held-out split (250 triplets, cosine "
         "accuracy); (b) is `data/sts-independent` (360 pairs written independently of the training data, "
         "other topics and styles; Spearman of cosine). Differences of about 1 point on (a) are 2–3 triplets."),
        "",
        ("Target: beat the base model at every dim ≤ 64 on both sets, with the full-size score within 0.5 "
         "points of the base's (or above)."),
        "",
        f"| variant | {heads} | verdict |",
        "|---|" + "---:|" * (2 * len(dims)) + "---|",
        f"| base model, truncated | {cells(base[TRIPLET])} | {cells(base[STS])} | |",
    ]
    scored = []
    for name in names:
        ok, text = verdict(base, rows[name])
        desc, _ = VARIANTS[name]
        lines.append(f"| **{name}**: {desc} | {cells(rows[name][TRIPLET])} | {cells(rows[name][STS])} | {text} |")
        scored.append((ok, round(small_dim_score(base, rows[name]), 4), name))
    top = max(scored)[:2]
    tied = [name for ok, score, name in scored if (ok, score) == top]
    # on a tie, the simplest setting wins; 'mean' over 'sum' because it keeps other terms' weights per-dim
    best = (top[0], top[1], "mean" if "mean" in tied else tied[0])
    lines += [
        "",
        "![quality vs dim](quality.png)",
        "",
        "## Cost",
        "",
        "| variant | train time (s) | samples/s | anchor: reference forward s/step |",
        "|---|---:|---:|---:|",
    ]
    for name in names:
        t = raw[name]["train"]
        anchor = raw[name].get("anchor") or {}
        lines.append(f"| {name} | {t['runtime_s']:.0f} | {t['samples_per_second']:.1f} | "
                     f"{anchor.get('reference_forward_s_per_step', '—')} |")
    if "sum" in rows and "mean" in rows:
        gap = max(abs(rows["sum"][ev][d] - rows["mean"][ev][d]) for ev in (TRIPLET, STS) for d in dims)
        lines += [
            "",
            "## Sum or mean over dims",
            "",
            (f"`sum` and `mean` differ by at most {100 * gap:.2f} points here. That is expected with AdamW and "
             "gradient clipping: dividing the loss by the number of dims scales every gradient by the same "
             "constant, which clipping (max_grad_norm 1.0) and Adam's per-parameter normalisation both undo, so the "
             "effective step size barely changes. The reduction matters where the Matryoshka loss is combined "
             "with another term: with `mean`, an anchor of weight w weighs as much as one of weight "
             "w × (number of dims) with `sum`. It also matters for optimisers without normalisation (SGD)."),
        ]
    lines += [
        "",
        "## Verdict",
        "",
        f"Best by the summed gain at dims 64 and 32 on both sets, among variants that meet the target "
        f"(or overall, if none does): **{best[2]}** ({'meets' if best[0] else 'does not meet'} the target)"
        + (f"; tied with {', '.join(t for t in tied if t != best[2])}, "
           "and the simplest of them is kept" if len(tied) > 1 else "")
        + ". The shipped quickstart uses this setting.",
        "",
    ]
    (DOCS / "quality.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
