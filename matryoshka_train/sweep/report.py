"""What a sweep reads from its trials and what it writes at the end.

* the objective, from a finished trial's results.json (``after``) or from one periodic evaluation
  in its metrics.jsonl (``eval_<evaluator>_dim<d>_<metric>`` keys) — the same aggregation over
  dims for both, so intermediate values and final values are comparable;
* ``trials.md`` / ``trials.json``: one row per trial (state, values, objective, the objective's
  metric at every dim, energy);
* ``best.yaml``: the base config with the fixed keys and the best trial's values applied, ready
  for ``mtrain run``;
* ``objective_by_trial.png`` and, with three or more scored trials, ``param_effects.png``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import yaml

from ..config.loading import validate
from .config import SweepConfig, decode_choice, set_key

MIN_TRIALS_FOR_EFFECTS = 3


def aggregate(per_dim: dict[int, float], c: SweepConfig) -> float | None:
    """The objective from ``{dim: value}``: the value at ``dim``, or the mean, min or weighted sum."""
    o = c.objective
    if not per_dim:
        return None
    if o.dim is not None:
        return per_dim.get(o.dim)
    values = [per_dim[d] for d in sorted(per_dim, reverse=True)]
    if o.aggregate == "mean":
        return sum(values) / len(values)
    if o.aggregate == "min":
        return min(values)
    if len(o.weights or []) != len(values):
        return None
    return sum(w * v for w, v in zip(o.weights or [], values))


def per_dim_from_results(results: dict[str, Any], c: SweepConfig) -> dict[int, float]:
    block = (results.get("after") or {}).get(c.objective.evaluator) or {}
    return {int(d): float(m[c.objective.metric]) for d, m in block.items() if c.objective.metric in m}


def per_dim_from_event(event: dict[str, Any], c: SweepConfig) -> dict[int, float]:
    head, tail = f"eval_{c.objective.evaluator}_dim", f"_{c.objective.metric}"
    out = {}
    for key, value in event.items():
        if key.startswith(head) and key.endswith(tail) and key[len(head):-len(tail)].isdigit():
            out[int(key[len(head):-len(tail)])] = float(value)
    return out


def objective_from_results(results: dict[str, Any], c: SweepConfig) -> float | None:
    return aggregate(per_dim_from_results(results, c), c)


def objective_from_event(event: dict[str, Any], c: SweepConfig) -> float | None:
    return aggregate(per_dim_from_event(event, c), c)


def trial_summary(results_path: Path, c: SweepConfig) -> dict[str, Any]:
    """User attrs recorded on a trial: the objective's metric per dim and the energy used. A trial
    without results.json (pruned, failed) gets the per-dim values of its last evaluation."""
    if results_path.is_file():
        results = json.loads(results_path.read_text(encoding="utf-8"))
        carbon = results.get("carbon") or {}
        energy = carbon.get("energy_kwh") if carbon.get("tracked", True) else None
        return {"per_dim": {str(d): v for d, v in per_dim_from_results(results, c).items()}, "energy_kwh": energy}
    per_dim: dict[int, float] = {}
    metrics = results_path.parent / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            per_dim = per_dim_from_event(event, c) or per_dim
    return {"per_dim": {str(d): v for d, v in per_dim.items()}, "energy_kwh": None}


# --------------------------------------------------------------------------------------------
# progress, as each trial ends


def planned_trials(c: SweepConfig) -> int:
    """How many trials the sweep finishes: ``n_trials``, or fewer when a grid has fewer points."""
    if c.sampler.type != "grid":
        return c.n_trials
    return min(c.n_trials, math.prod(len(p.grid or p.choices) for p in c.search_space.values()))


def progress_line(study: Any, c: SweepConfig, trial: int, outcome: str) -> str:
    """The line printed when a trial ends: trials done of the total (the whole study's, every
    driver's), this trial's outcome and the best value so far, e.g.
    ``[3/8 done] trial 2: dev_dimmean_cosine_accuracy = 0.8120 · best 0.8450 (trial 1)``."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")
                or (t.state.name == "FAIL" and not t.user_attrs.get("interrupted"))]  # interrupted: runs again
    scored = [t for t in finished if t.state.name == "COMPLETE" and t.values]
    pick = max if c.objective.direction == "maximize" else min
    best = pick(scored, key=lambda t: t.value) if scored else None
    tail = f"best {best.value:.4f} (trial {best.number})" if best else "no completed trial yet"
    return f"[{len(finished)}/{planned_trials(c)} done] trial {trial}: {outcome} · {tail}"


# --------------------------------------------------------------------------------------------
# the outputs


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING" or t.user_attrs.get("surplus"):
            continue  # not run yet, or never run: asked beyond n_trials by drivers starting together
        value = (
            t.value
            if t.values
            else (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        )
        state = "interrupted" if t.user_attrs.get("interrupted") else t.state.name.lower()
        rows.append(
            {
                "trial": t.number,
                "state": state,
                "params": {k: decode_choice(v) for k, v in t.params.items()},
                "objective": value,
                "per_dim": t.user_attrs.get("per_dim", {}),
                "energy_kwh": t.user_attrs.get("energy_kwh"),
                "output_dir": t.user_attrs.get("output_dir"),
                "error": t.user_attrs.get("error"),
            }
        )
    return rows


def trials_table(rows: list[dict[str, Any]], c: SweepConfig) -> str:
    """A Markdown table: one row per trial; a pruned trial shows its last intermediate objective."""
    keys = list(c.search_space)
    dims = sorted({int(d) for r in rows for d in r["per_dim"]}, reverse=True)
    head = ["trial", "state", *keys, c.objective.label(), *[f"{c.objective.metric}@{d}" for d in dims], "energy_kWh"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["trial"]), r["state"], *[_fmt(r["params"].get(k)) for k in keys], _fmt(r["objective"])]
        cells += [_fmt(r["per_dim"].get(str(d))) for d in dims]
        cells.append(_fmt(r["energy_kwh"], ".2e"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, ".3g") if spec == ".4f" and value and abs(value) < 1e-3 else format(value, spec)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def best_config(sweep: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The base config (``extends`` merged, fixed keys applied) with the best values applied, as
    typed YAML values (a float stays a float), and its output_dir set to ``<sweep>/best``."""
    raw = copy.deepcopy(sweep.base_raw)
    values = {
        **{k: decode_choice(v) for k, v in params.items()},
        "training.output_dir": str(Path(sweep.config.output_dir) / "best"),
    }
    for key, value in values.items():
        set_key(raw, key, value)
    validate(copy.deepcopy(raw))  # it must pass mtrain run's check
    return raw


def write_outputs(sweep: Any, study: Any) -> dict[str, Any]:
    c, out = sweep.config, sweep.out
    rows = trial_rows(study)
    table = trials_table(rows, c)
    summary: dict[str, Any] = {
        "study": c.study_name,
        "storage": sweep.storage_url,
        "objective": c.objective.label(),
        "direction": c.objective.direction,
        "trials": rows,
        "best": None,
    }
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    text = [f"# Sweep {c.study_name}", "", f"Objective: {c.objective.label()} ({c.objective.direction})", "", table, ""]
    if complete:
        best = study.best_trial
        params = {k: decode_choice(v) for k, v in best.params.items()}
        raw = best_config(sweep, best.params)
        header = (
            f"# best.yaml from sweep '{c.study_name}': trial {best.number}, {c.objective.label()} = "
            f"{best.value:.4f}\n"
            f"# the base config {sweep.base_path} with the sweep's fixed keys and these values applied:\n"
            + "".join(f"#   {k}: {json.dumps(v)}\n" for k, v in params.items())
        )
        (out / "best.yaml").write_text(
            header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        summary["best"] = {
            "trial": best.number,
            "value": best.value,
            "params": params,
            "config": str(out / "best.yaml"),
        }
        text += [
            f"Best: trial {best.number}, {c.objective.label()} = {best.value:.4f}",
            "",
            "```yaml",
            yaml.safe_dump(params, sort_keys=False).strip(),
            "```",
            "",
        ]
    (out / "trials.md").write_text("\n".join(text), encoding="utf-8")
    (out / "trials.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    summary["plots"] = _plots(rows, c, out)
    sweep.echo("\n" + table)
    if summary["best"]:
        b = summary["best"]
        sweep.echo(
            f"\nBest: trial {b['trial']} ({c.objective.label()} = {b['value']:.4f}): "
            + ", ".join(f"{k}={v}" for k, v in b["params"].items())
        )
        sweep.echo(f"Runnable config: {b['config']}  (mtrain run {b['config']})")
    else:
        sweep.echo("\nNo trial completed, so there is no best.yaml; see the trial logs under " + str(out / "trials"))
    return summary


def _plots(rows: list[dict[str, Any]], c: SweepConfig, out: Path) -> list[str]:
    """objective_by_trial.png always (when a trial scored); param_effects.png with enough trials."""
    try:
        import matplotlib  # optional extra (sweep/report): plots only

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional extra
        import matplotlib.ticker  # optional extra
    except ImportError:
        return []
    scored = [r for r in rows if isinstance(r["objective"], (int, float)) and math.isfinite(r["objective"])]
    if not scored:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for state, marker, colour in (("complete", "o", "tab:blue"), ("pruned", "x", "tab:orange")):
        pts = [r for r in scored if r["state"] == state]
        if not pts:
            continue
        ax.scatter(
            [r["trial"] for r in pts],
            [r["objective"] for r in pts],
            marker=marker,
            color=colour,
            label=state if state == "complete" else "pruned (last evaluation)",
        )
    best, running = [], None
    for r in sorted((r for r in scored if r["state"] == "complete"), key=lambda r: r["trial"]):
        v = r["objective"]
        running = (
            v if running is None else (max(running, v) if c.objective.direction == "maximize" else min(running, v))
        )
        best.append((r["trial"], running))
    if best:
        ax.step([b[0] for b in best], [b[1] for b in best], where="post", color="tab:green", label="best so far")
    ax.set_title(f"Sweep {c.study_name}: objective by trial")
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(c.objective.label())
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "objective_by_trial.png", dpi=100)
    plt.close(fig)
    written.append("objective_by_trial.png")
    done = [r for r in scored if r["state"] == "complete"]
    if len(done) >= MIN_TRIALS_FOR_EFFECTS:
        keys = list(c.search_space)
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
        for ax, key in zip(axes[0], keys):
            p = c.search_space[key]
            xs = [r["params"].get(key) for r in done]
            if p.kind == "range":
                ax.scatter(xs, [r["objective"] for r in done], color="tab:blue")
                lo, hi = float(p.low), float(p.high)
                if p.log:
                    ax.set_xscale("log")
                    ticks = [lo, (lo * hi) ** 0.5, hi]
                else:
                    ticks = [lo, (lo + hi) / 2, hi]
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.set_xticks(ticks, [format(t, ".2g") for t in ticks])
            else:
                labels = [
                    json.dumps(v) if not isinstance(v, str) else v
                    for v in (p.choices if p.choices is not None else p.grid)
                ]
                pos = {label: i for i, label in enumerate(labels)}
                ax.scatter(
                    [pos.get(json.dumps(x) if not isinstance(x, str) else x, -1) for x in xs],
                    [r["objective"] for r in done],
                    color="tab:blue",
                )
                ax.set_xticks(range(len(labels)), labels)
                ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.set_title(key)
            ax.set_xlabel(key.rsplit(".", 1)[-1] + (" (log scale)" if p.log else ""))
            ax.set_ylabel("objective")
        fig.suptitle(f"Per-parameter effect on {c.objective.label()} (completed trials)")
        fig.tight_layout()
        fig.savefig(out / "param_effects.png", dpi=100)
        plt.close(fig)
        written.append("param_effects.png")
    return written
