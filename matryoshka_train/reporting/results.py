"""The figures results.json holds beside the evaluations: grid and aggregates, quality per kWh,
padding saved, the training summary. Plain functions of results, read by `run` and `eval`."""

from __future__ import annotations

import re
from typing import Any


def evaluation_extras(evaluator: Any, evaluated_after: bool, grid_before: Any) -> dict[str, Any]:
    """The dim × precision grid and the over-dims aggregates for results.json (after training;
    the grid before training too, when precisions beyond float32 are configured)."""
    if evaluator is None or not evaluated_after:
        return {}
    extras: dict[str, Any] = {"grid": evaluator.last_grid, "aggregates": evaluator.last_aggregates}
    if len(evaluator.precisions) > 1 and grid_before:
        extras["grid_before"] = grid_before
    return extras


def quality_per_kwh(before: Any, after: Any, primary: dict[str, str], carbon: dict[str, Any]) -> dict[str, Any] | None:
    """Each evaluator's primary metric at the full dim per kWh of the whole run, and the gain over
    the base model per kWh (only when codecarbon measured energy)."""
    energy = carbon.get("energy_kwh") if carbon.get("tracked") else None
    if not energy or not after:
        return None
    out: dict[str, Any] = {"energy_kwh": energy}
    for name, metric in primary.items():
        per_dim = after.get(name, {})
        if not per_dim:
            continue
        dim = max(per_dim, key=int)
        value = per_dim[dim].get(metric)
        base = (before or {}).get(name, {}).get(dim, {}).get(metric)
        out[name] = {
            "metric": metric, "dim": int(dim), "value": value,
            "per_kwh": value / energy if value is not None else None,
            "gain_per_kwh": (value - base) / energy if value is not None and base is not None else None,
        }
    return out


def padding_summary(forward: Any) -> dict[str, Any] | None:
    """How much of the training forward compute was padding, with and without the sorted or packed
    forward (``forward``: the one installed); for the packed one, also how its attention ran."""
    if forward is None or not forward.padded_tokens:
        return None
    attention = (
        {"attention": forward.attention, "attention_why": forward.attention_why}
        if getattr(forward, "attention", None)
        else {}
    )
    return {
        **attention,
        "real_tokens": forward.real_tokens,
        "padded_tokens_plain": forward.padded_tokens,
        "padded_tokens_run": forward.run_tokens,
        "pad_share_plain": round(1 - forward.real_tokens / forward.padded_tokens, 4),
        "pad_share_run": round(1 - forward.real_tokens / forward.run_tokens, 4),
        "forwards_without_host_lengths": forward.uncarried,
    }


def train_summary(train_output: Any, trainer: Any) -> dict[str, Any]:
    metrics = train_output.metrics
    runtime = float(metrics.get("train_runtime", 0.0))
    per_second = float(metrics.get("train_samples_per_second", 0.0))
    return {
        "steps": int(trainer.state.global_step),
        "samples": round(per_second * runtime),
        "runtime_s": round(runtime, 3),
        "samples_per_second": round(per_second, 3),
        "final_loss": _last_loss(trainer),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric,
    }


def _last_loss(trainer: Any) -> float | None:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return float(losses[-1]) if losses else None


PER_DIM_KEY = re.compile(r"^dim(?P<dim>\d+)_(?P<metric>.+)$")


def split_per_dim_key(key: str, names: list[str]) -> tuple[str, int, str] | None:
    """``'<evaluator>_dim<d>_<metric>'`` as (evaluator, d, metric), the evaluator being one of
    ``names`` (the longest that fits, as names may contain '_'); None when the key is not of that form."""
    for name in sorted(names, key=len, reverse=True):
        match = PER_DIM_KEY.match(key[len(name) + 1 :]) if key.startswith(name + "_") else None
        if match:
            return name, int(match.group("dim")), match.group("metric")
    return None


def reference_comparison(reference: dict[str, Any] | None, after: Any, names: list[str]) -> dict[str, Any] | None:
    """The run's final figures against published ones (``evaluation.reference``): for each key
    ``<evaluator>_dim<d>_<metric>``, the published value, the run's value from ``after`` and
    ``delta`` = run − published (None where the run has no such figure). ``names``: the
    evaluators of the run (to split keys whose evaluator name contains '_')."""
    if not reference:
        return None
    rows: dict[str, Any] = {}
    for key, published in reference["metrics"].items():
        parts = split_per_dim_key(key, list(names) or list(after or {}))
        name, dim, metric = parts if parts else (None, None, None)
        value = (after or {}).get(name, {}).get(str(dim), {}).get(metric) if parts else None
        rows[key] = {
            "evaluator": name, "dim": dim, "metric": metric, "published": published, "run": value,
            "delta": value - published if value is not None else None,
        }
    return {"source": reference["source"], "metrics": rows}
