"""`mtrain eval MODEL --config EVAL.yaml`: evaluate any sentence-transformers model at every dim
(and precision) without training, writing results.json in the shape of a run's (so that
`mtrain report` reads both).

The config is an eval-only file (:class:`~matryoshka_train.config.schema.EvalConfig`: evaluators,
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

from ..config.schema import EvalConfig, ModelConfig, RunConfig
from ..data.distill_labels import attach_teacher_labels
from ..data.loading import prepare_datasets
from ..errors import DataError
from ..models.loading import load_model, resolve_dims
from ..models.references import evaluator_teachers, load_reference
from ..reporting import redact
from ..reporting.carbon import CarbonMeter
from ..reporting.report import eval_table, reference_lines
from ..reporting.results import quality_per_kwh, reference_comparison
from .spec import build_matryoshka_evaluator, resolve_evaluators


def default_output(model_name: str) -> Path:
    """outputs/eval/<model name with unsafe characters replaced>."""
    tail = model_name.rstrip("/\\").replace("package:", "")
    return Path("outputs") / "eval" / (re.sub(r"[^A-Za-z0-9._-]+", "_", tail).strip("_") or "model")


def evaluate(model_name: str, config: RunConfig | EvalConfig, output_dir: str | Path | None = None,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate ``model_name`` as ``config`` says; write and return results.json's content.

    The evaluators' data, their teachers and (for a run config) the datasets' eval splits are
    resolved by the same functions `mtrain check` and `mtrain run` use."""
    started = time.time()
    out = Path(output_dir) if output_dir else default_output(model_name)
    model = load_model(ModelConfig(name_or_path=model_name))
    dims = resolve_dims(config.matryoshka, model.get_embedding_dimension())
    batch_size = config.training.per_device_eval_batch_size if isinstance(config, RunConfig) else config.batch_size
    resolved = resolve_evaluators(config.evaluation, _eval_rows(config, echo))
    if resolved.problems:
        raise DataError(resolved.problems)
    base = config.model if isinstance(config, RunConfig) else None
    teachers = {ref.where.removesuffix(".teacher"): load_reference(ref)
                for ref in evaluator_teachers(config.evaluation.evaluators, base)}
    evaluator = build_matryoshka_evaluator(config.evaluation, resolved.evaluators, dims, batch_size, teachers)
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
        "reference": reference_comparison(
            reference.model_dump() if (reference := config.evaluation.reference) else None,
            evaluator.last_results, [spec.name for spec in evaluator.specs],
        ),
        "wall_time_s": round(time.time() - started, 2),
    }
    redact.write_text(out / "results.json", json.dumps(results, indent=2))
    echo(eval_table(results) + "".join("\n" + line for line in reference_lines(results)))
    echo(f"\nresults.json written to {out}; `mtrain report {out}` draws it")
    return results


def _eval_rows(config: RunConfig | EvalConfig, echo: Callable[[str], None]) -> dict[str, Any]:
    """Eval splits of the run config's datasets that an evaluator names, prepared as `run` prepares
    them (distillation labels included); none for an EvalConfig."""
    if not isinstance(config, RunConfig):
        return {}
    wanted = {e.dataset for e in config.evaluation.evaluators if e.dataset}
    read = prepare_datasets(config, only=wanted)
    if read.problems:
        raise DataError(read.problems)
    prepared = list(read.prepared.values())
    attach_teacher_labels(config, prepared, echo, train=False)
    return {p.name: p.eval for p in prepared}
