"""`mtrain eval MODEL --config EVAL.yaml`: evaluate any sentence-transformers model at every dim
(and precision) without training, writing results.json in the shape of a run's (so that
`mtrain report` reads both).

The config is an eval-only file (:class:`~matryoshka_train.config.EvalConfig`: evaluators,
dims, precisions) or a run config, whose evaluation section is used (with its datasets' eval
splits). MODEL is a local directory, a hub id or ``package:<module>``; the config's own model is
not used, so one config can compare many models.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import EvalConfig, ModelConfig, RunConfig
from .errors import DataError


def default_output(model_name: str) -> Path:
    """outputs/eval/<model name with unsafe characters replaced>."""
    tail = model_name.rstrip("/\\").replace("package:", "")
    return Path("outputs") / "eval" / (re.sub(r"[^A-Za-z0-9._-]+", "_", tail).strip("_") or "model")


def evaluate(model_name: str, config: RunConfig | EvalConfig, output_dir: str | Path | None = None,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate ``model_name`` as ``config`` says; write and return results.json's content."""
    from .carbon import CarbonMeter
    from .evaluation import build_matryoshka_evaluator
    from .models import load_model, resolve_dims
    from .report import eval_table
    from .training import quality_per_kwh

    started = time.time()
    out = Path(output_dir) if output_dir else default_output(model_name)
    model = load_model(ModelConfig(name_or_path=model_name))
    dims = resolve_dims(config.matryoshka, model.get_embedding_dimension())
    batch_size = config.training.per_device_eval_batch_size if isinstance(config, RunConfig) else config.batch_size

    def teacher(name: str) -> Any:
        return load_model(ModelConfig(name_or_path=name))

    evaluator = build_matryoshka_evaluator(config.evaluation, _eval_rows(config), dims, batch_size, teacher)
    out.mkdir(parents=True, exist_ok=True)
    meter = CarbonMeter(config.carbon, out)
    meter.start()
    echo(f"Evaluating {model_name} at dims {evaluator.dims} · precisions {', '.join(evaluator.precisions)} …")
    evaluator(model)
    carbon = meter.stop()
    results = {
        "model": model_name,
        "dims": evaluator.dims,
        "before": {},
        "after": evaluator.last_results,  # same key as a run's, so `mtrain report` reads both
        "primary_metric": dict(evaluator.primary),
        "grid": evaluator.last_grid,
        "aggregates": evaluator.last_aggregates,
        "carbon": carbon,
        "quality_per_kwh": quality_per_kwh(None, evaluator.last_results, dict(evaluator.primary), carbon),
        "wall_time_s": round(time.time() - started, 2),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    echo(eval_table(results))
    echo(f"\nresults.json written to {out}; `mtrain report {out}` draws it")
    return results


def _eval_rows(config: RunConfig | EvalConfig) -> dict[str, Any]:
    """Eval splits of the run config's datasets that an evaluator names (none for EvalConfig)."""
    if not isinstance(config, RunConfig):
        return {}
    from .data import HubUnavailable, prepare_dataset

    wanted = {e.dataset for e in config.evaluation.evaluators if e.dataset}
    rows = {}
    for i, dcfg in enumerate(config.datasets):
        if dcfg.name not in wanted:
            continue
        try:
            prepared = prepare_dataset(dcfg, i, config.training.seed, config.loss_for(dcfg).name)
        except HubUnavailable as exc:
            raise DataError(f"cannot reach the hub for {dcfg.source.describe()} ({exc})", where=f"datasets.{i}.source") from None
        rows[dcfg.name] = prepared.eval
    return rows
