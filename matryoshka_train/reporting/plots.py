"""PNG plots for `mtrain report`. Each function takes loaded runs (:class:`RunData`) and a path,
draws one figure with a title, labelled axes (with units) and a legend, and writes it.

matplotlib is an optional dependency (``pip install matryoshka-train[report]``); it is imported
here only, with the non-interactive Agg backend, so reports render on servers without a display.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

PRECISION_STYLE = {"float32": ("o", "tab:blue"), "int8": ("s", "tab:orange"), "binary": ("^", "tab:green")}


@dataclass
class RunData:
    """One run (or `mtrain eval`) directory as the report sees it."""

    label: str
    path: Path
    results: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def primary(self) -> dict[str, str]:
        return self.results.get("primary_metric", {})

    def published(self, name: str, metric: str) -> dict[int, float]:
        """{dim: published value} of one evaluator's metric (results.json's ``reference``)."""
        rows = ((self.results.get("reference") or {}).get("metrics") or {}).values()
        return {int(r["dim"]): r["published"] for r in rows if r.get("evaluator") == name and r.get("metric") == metric}

    def per_dim(self, phase: str, name: str, metric: str) -> dict[int, float]:
        """{dim: value} of one evaluator's metric in 'before' or 'after'."""
        block = (self.results.get(phase) or {}).get(name, {})
        return {int(d): m[metric] for d, m in block.items() if metric in m}


def _pyplot() -> Any:
    try:
        import matplotlib  # optional extra (report): imported only when plots are drawn
    except ImportError:
        raise UserError(
            "plots need matplotlib: pip install 'matryoshka-train[report]'", where="mtrain report"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional extra (report)

    return plt


def primary_evaluators(runs: list[Any]) -> list[tuple[str, str]]:
    """(evaluator, primary metric) over all runs, in first-seen order."""
    seen: dict[str, str] = {}
    for run in runs:
        for name, metric in run.primary.items():
            seen.setdefault(name, metric)
    return list(seen.items())


def _grid_axes(plt: Any, count: int, title: str) -> tuple[Any, list[Any]]:
    cols = min(count, 2)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    return fig, flat[:count]


def _plain_numbers() -> Any:
    from matplotlib.ticker import FuncFormatter  # optional extra (report)

    return FuncFormatter(lambda value, _pos: f"{value:g}")


def _dim_color(dim: int, dims: list[int]) -> Any:
    """One colour per dim, the same in every panel (largest dim first in the palette)."""
    palette = [
        "tab:blue",
        "tab:orange",
        "tab:green",
        "tab:red",
        "tab:purple",
        "tab:brown",
        "tab:pink",
        "tab:olive",
        "tab:cyan",
    ]
    order = sorted(dims, reverse=True)
    return palette[order.index(dim) % len(palette)] if dim in order else "grey"


def _dim_axis(ax: Any, dims: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims)
    ax.set_xticklabels([str(d) for d in dims])
    ax.minorticks_off()
    ax.set_xlabel("embedding size (dimensions kept, log scale)")


def metric_vs_dim(runs: list[RunData], path: Path) -> Path | None:
    """Primary metric against embedding size: after training per run, the base model before, and
    the published figures (results.json's ``reference``) as stars."""
    plt = _pyplot()
    evaluators = primary_evaluators(runs)
    if not evaluators:
        return None
    fig, axes = _grid_axes(plt, len(evaluators), "Quality at each Matryoshka dimension")
    for ax, (name, metric) in zip(axes, evaluators):
        dims: set[int] = set()
        sources: set[str] = set()  # each published source once per panel
        drew_before = False
        for run in runs:
            after = run.per_dim("after", name, metric)
            before = run.per_dim("before", name, metric)
            if before and not drew_before:  # runs from one base model share the same "before"
                xs = sorted(before)
                ax.plot(
                    xs, [before[x] for x in xs], "--", color="grey", marker="o", label="base model (before training)"
                )
                drew_before = True
            if after:
                xs = sorted(after)
                label = (
                    run.label if len(runs) > 1 or run.results.get("before") == {} else f"{run.label} (after training)"
                )
                ax.plot(xs, [after[x] for x in xs], "-", marker="o", linewidth=2, label=label)
            dims |= set(after) | set(before)
            published = run.published(name, metric)
            if published and run.results["reference"]["source"] not in sources:
                sources.add(run.results["reference"]["source"])
                xs = sorted(published)
                ax.plot(xs, [published[x] for x in xs], linestyle="none", marker="*", markersize=12, color="black",
                        label=f"published: {run.results['reference']['source']}")
                dims |= set(published)
        if dims:
            _dim_axis(ax, sorted(dims))
        ax.set_ylabel(f"{metric} (higher is better)")
        ax.set_title(f"{name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats: none is both as small (bytes) and as good (metric)."""
    front: list[tuple[float, float]] = []
    best = float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def metric_vs_bytes(runs: list[RunData], path: Path) -> Path | None:
    """Primary metric against storage per vector over every dim × precision cell; Pareto front marked."""
    plt = _pyplot()
    evaluators = [(n, m) for n, m in primary_evaluators(runs) if any(n in r.results.get("grid", {}) for r in runs)]
    if not evaluators:
        return None
    fig, axes = _grid_axes(plt, len(evaluators), "Quality against memory per vector (dims × precisions)")
    markers_for_runs = ["-", "--", ":", "-."]
    for ax, (name, metric) in zip(axes, evaluators):
        points = []
        for r_i, run in enumerate(runs):
            grid = run.results.get("grid", {}).get(name, {})
            for precision, cells in grid.items():
                marker, color = PRECISION_STYLE.get(precision, ("x", "black"))
                xs = [(c["bytes"], c[metric], int(d)) for d, c in cells.items() if metric in c]
                if not xs:
                    continue
                xs.sort()
                label = precision if len(runs) == 1 else f"{run.label} · {precision}"
                ax.plot(
                    [p[0] for p in xs],
                    [p[1] for p in xs],
                    markers_for_runs[r_i % 4],
                    marker=marker,
                    color=color,
                    alpha=0.85,
                    label=label,
                )
                for b, v, d in xs:
                    ax.annotate(str(d), (b, v), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
                points += [(b, v) for b, v, _ in xs]
        front = pareto_front(points)
        if front:
            ax.step(
                [p[0] for p in front],
                [p[1] for p in front],
                where="post",
                color="black",
                linewidth=1,
                alpha=0.6,
                zorder=1,
            )
            ax.scatter(
                [p[0] for p in front],
                [p[1] for p in front],
                s=140,
                facecolors="none",
                edgecolors="black",
                linewidths=1.2,
                label="Pareto front (best for its size)",
                zorder=3,
            )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(_plain_numbers())
        ax.set_xlabel("bytes per vector (log scale; point labels: dimensions)")
        ax.set_ylabel(f"{metric} (higher is better)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(runs: list[RunData], path: Path) -> Path | None:
    """Training loss (total and per-dim components) and evaluation over steps from metrics.jsonl."""
    plt = _pyplot()
    if not any(run.events for run in runs):
        return None
    evaluators = primary_evaluators(runs)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), squeeze=False)
    loss_ax, eval_ax = axes[0]
    fig.suptitle("Training over steps (metrics.jsonl)", fontsize=13)
    for run in runs:
        train = [e for e in run.events if e.get("event") == "train" and "loss" in e]
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        all_dims = [int(d) for d in run.results.get("dims", [])]
        if train:
            loss_ax.plot(
                [e["step"] for e in train],
                [e["loss"] for e in train],
                linewidth=2,
                color="black" if len(runs) == 1 else None,
                label=f"{prefix}total loss",
            )
            components = sorted(
                {k for e in train for k in e if k.startswith("dim") and k[3:].isdigit()}, key=lambda k: -int(k[3:])
            )
            if len(runs) == 1:
                extra = {"anchor": ("grey", "anchor term"), "similarity": ("tab:brown", "similarity term")}
                for key in components + [k for k in extra if any(k in e for e in train)]:
                    xs = [e for e in train if key in e]
                    color = extra[key][0] if key in extra else _dim_color(int(key[3:]), all_dims)
                    loss_ax.plot(
                        [e["step"] for e in xs],
                        [e[key] for e in xs],
                        linewidth=1.2,
                        alpha=0.9,
                        color=color,
                        label=extra[key][1] if key in extra else f"{key[3:]} dims",
                    )
        if evaluators:
            name, metric = evaluators[0]
            series = _eval_series(run, name, metric)
            dims = sorted(series, reverse=True)
            shown = dims if len(runs) == 1 else dims[:1] + dims[-1:]
            for dim in shown:
                pts = sorted(series[dim].items())
                color = _dim_color(dim, all_dims or dims) if len(runs) == 1 else None
                eval_ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=f"{prefix}{dim} dims"
                )
    from matplotlib.ticker import MaxNLocator  # optional extra (report)

    for ax in (loss_ax, eval_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_xlabel("training step")
    loss_ax.set_ylabel("loss (per logging window; lower is better)")
    loss_ax.set_title("Training loss: total and each Matryoshka dim's share")
    loss_ax.grid(alpha=0.3)
    if loss_ax.lines:
        loss_ax.legend(fontsize=8)
    if evaluators:
        name, metric = evaluators[0]
        eval_ax.set_title(f"Evaluation: {name} · {metric}")
        eval_ax.set_ylabel(f"{metric} (higher is better)")
    eval_ax.set_xlabel("training step (0 = base model)")
    eval_ax.grid(alpha=0.3)
    if eval_ax.lines:
        eval_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _eval_series(run: RunData, name: str, metric: str) -> dict[int, dict[int, float]]:
    """{dim: {step: value}} from eval_before, periodic eval and eval_after events."""
    series: dict[int, dict[int, float]] = {}
    for e in run.events:
        kind, step = e.get("event"), int(e.get("step") or 0)
        if kind in ("eval_before", "eval_after"):
            for dim, metrics in (e.get("results") or {}).get(name, {}).items():
                if metric in metrics:
                    series.setdefault(int(dim), {})[step] = metrics[metric]
        elif kind == "eval":
            head, tail = f"eval_{name}_dim", f"_{metric}"
            for key, value in e.items():
                middle = key[len(head) : -len(tail)] if key.startswith(head) and key.endswith(tail) else ""
                if middle.isdigit():
                    series.setdefault(int(middle), {})[step] = value
    return series
