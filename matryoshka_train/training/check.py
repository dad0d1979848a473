"""`mtrain check`: everything `mtrain run` would verify before training, without training.

It is :func:`~matryoshka_train.training.prepare.prepare` in its collecting mode, plus what a person
reading the report wants to know (rows, columns, text lengths, batch semantics). Local files and
models are read; hub sources are tried only when the hub answers, and are otherwise reported as
"not verified offline" (a warning, not a failure).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config.loading import dump_resolved
from ..config.registry import LOSSES
from ..config.schema import RunConfig
from ..data.sources import long_text_counts
from ..errors import Problem
from ..reporting.publish import hub_lines
from .arguments import argument_problems
from .plan import batch_lines, loss_problems
from .prepare import prepare


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    resolved: str = ""  # the config with every default filled in (printed by `mtrain check --show-config`)

    @property
    def ok(self) -> bool:
        return not self.problems


SAVE_STEPS_IGNORED = "training.save_steps is {steps} but training.save_strategy is 'no', so no checkpoints are saved"


def check(config: RunConfig) -> CheckReport:
    """Verify a validated config against its model and data; never raises for user errors."""
    prep = prepare(config, check=True)
    report = CheckReport(
        problems=prep.problems + loss_problems(prep) + argument_problems(prep), resolved=dump_resolved(config)
    )
    model_lines = [line for line in prep.lines if line.startswith(("Model:", "Matryoshka dims:"))]
    report.lines += model_lines
    report.warnings += [w for w in prep.unverified if w.startswith("model:")]
    columns: dict[str, list[str]] = {}
    for prepared in prep.datasets:
        i = next(j for j, d in enumerate(config.datasets) if d.name == prepared.name)
        dcfg = config.datasets[i]
        lcfg = config.loss_for(dcfg)
        columns[dcfg.name] = prepared.columns
        n_eval = len(prepared.eval) if prepared.eval is not None else 0
        report.lines.append(
            f"Dataset {dcfg.name}: {len(prepared.train)} train / {n_eval} eval rows · columns "
            f"{prepared.columns} · loss {lcfg.name}" + (" (Matryoshka)" if lcfg.matryoshka else "")
            + "".join(f" · {n}" for n in prepared.notes)
        )
        if dcfg.columns is None and LOSSES[lcfg.name].in_batch_negatives and len(prepared.columns) > 2:
            report.warnings.append(
                f"datasets.{i} ({dcfg.name}): no columns listed, so all {len(prepared.columns)} are used in file order "
                f"({', '.join(prepared.columns)}): the first is the anchor, the second the positive, the rest hard "
                "negatives; list the ones to use in datasets[].columns"
            )
        if prep.model is not None:
            report.lines += long_text_lines(prepared, i, prep.model)
    report.warnings += prep.warnings + [w for w in prep.unverified if not w.startswith("model:")]
    report.warnings += save_warnings(config)
    report.lines += [line for line in prep.lines if line not in model_lines]
    report.lines += batch_lines(config, columns, model=prep.model, dims=prep.dims)
    publish, publish_warnings = hub_lines(config.hub)
    report.lines += publish
    report.warnings += publish_warnings
    return report


def save_warnings(config: RunConfig, explicit: set[str] | None = None) -> list[str]:
    """Keys that ask for checkpoints a setting elsewhere turns off. ``explicit``: the training keys
    the user wrote (default: those of ``config`` itself; a stage passes its own and the top level's)."""
    t = config.training
    written = t.model_fields_set if explicit is None else explicit
    if t.save_strategy == "no" and "save_steps" in written:
        return [f"{SAVE_STEPS_IGNORED.format(steps=t.save_steps)}; set training.save_strategy: steps (the default) "
                "to save them"]
    return []


def long_text_lines(prepared: Any, index: int, model: Any) -> list[str]:
    """How many rows are longer than the model reads (they are truncated, not dropped)."""

    limit = getattr(model, "max_seq_length", None)
    tokenizer = getattr(model, "tokenizer", None)
    if not limit or tokenizer is None or not callable(tokenizer):
        return []
    try:
        over, counted, longest = long_text_counts(prepared.train, tokenizer, int(limit))
    except Exception as exc:  # noqa: BLE001 - a tokenizer we cannot call this way: say so, do not fail the check
        return [f"  {prepared.name}: text lengths not counted ({type(exc).__name__})"]
    sampled = "" if counted == len(prepared.train) else f" (a sample of {counted})"
    if not over:
        return [f"  {prepared.name}: every text fits in max_seq_length {limit} tokens{sampled}; longest {longest}"]
    return [
        (f"  {prepared.name}: {over} of {counted} rows{sampled} have a text longer than max_seq_length {limit} tokens "
         f"(longest {longest}); they will be truncated. Raise model.max_seq_length to keep more of them")
    ]
