"""Multi-stage runs: train in stages, each starting from the model the previous stage wrote.

A config with ``stages:`` is a top-level config plus a list of partial configs. Each stage's
sections (datasets, loss, matryoshka, training, evaluation) are merged over the top level the way
``extends`` merges files (mappings key by key, lists replace), so a stage says only what differs.
All stages are validated before anything runs (see :func:`matryoshka_train.config.validate`).

Outputs, for ``training.output_dir: out`` and stages ``triplets`` then ``sts``::

    out/stage-1-triplets/   a complete run: model, results.json, metrics.jsonl, card, ...
    out/stage-2-sts/        the same for stage 2, which started from out/stage-1-triplets
    out/                    the final model (a copy of the last stage's), results.json with
                            {"stages": [...], "before": <stage 1 before>, "after": <last stage after>, ...}
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.loading import dump_resolved, merge_stage, validate
from ..config.schema import RunConfig
from ..errors import Problem
from ..reporting import redact
from ..reporting.report import add_model_card_section, results_table
from .check import CheckReport, check
from .loop import guard_output_dir, run_single

# Files of a stage's run that describe that stage only; the final output_dir gets its own.
_STAGE_ONLY = {"results.json", "metrics.jsonl", "emissions.csv", "config.resolved.yaml"}


@dataclass
class Stage:
    index: int  # 0-based, as in the YAML path stages.<index>
    name: str
    config: RunConfig  # the whole config this stage runs with

    @property
    def label(self) -> str:
        return f"stage {self.index + 1} ({self.name})"


def stage_dir(output_dir: str | Path, index: int, name: str) -> Path:
    return Path(output_dir) / f"stage-{index + 1}-{name}"


def expand(config: RunConfig, for_check: bool = False) -> list[Stage]:
    """The stages of ``config`` as whole configs. Stage N > 1 starts from stage N-1's output
    directory; with ``for_check`` it keeps the top-level model instead (the directory does not
    exist yet, and the stage-1 model has the same architecture, so it stands in for the checks)."""
    base = config.model_dump(mode="json", exclude={"stages"})
    stages = []
    previous: Path | None = None
    for i, scfg in enumerate(config.stages or []):
        raw = merge_stage(base, scfg.model_dump(mode="json", exclude_none=True))
        here = stage_dir(config.training.output_dir, i, scfg.name)
        raw["training"]["output_dir"] = str(here)
        if previous is not None and not for_check:
            # the previous stage saved a complete sentence-transformers model (already reduced,
            # already static-built): load it as it is
            raw["model"].update(name_or_path=str(previous), type="pretrained", embedding_dim=None, layers=None)
        stages.append(Stage(i, scfg.name, validate(raw)))
        previous = here
    return stages


def run_stages(config: RunConfig, overwrite: bool = False, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage in order, then write the final model and the combined results.json."""
    out = Path(config.training.output_dir)
    guard_output_dir(out, overwrite)
    stages = expand(config)
    per_stage = []
    for stage in stages:
        echo(f"\n=== {stage.label.capitalize()} of {len(stages)} → {stage.config.training.output_dir}")
        results = run_single(stage.config, overwrite=overwrite, echo=echo)
        per_stage.append(
            {"stage": stage.index + 1, "name": stage.name, "output_dir": stage.config.training.output_dir, **results}
        )

    final = Path(stages[-1].config.training.output_dir)
    copy_model(final, out)
    combined = combine(per_stage)
    redact.write_text(out / "results.json", json.dumps(combined, indent=2))
    redact.write_text(out / "config.resolved.yaml", dump_resolved(config))
    add_model_card_section(out / "README.md", config, combined)
    redact.scrub_tree(out)  # the copied model card and files other libraries wrote
    echo(f"\n=== All {len(stages)} stages: before = {stages[0].label}'s base model, after = the final model")
    echo(results_table(combined))
    echo(f"\nFinal model and combined results.json written to {out}; each stage's outputs are in its stage-N folder")
    return combined


def copy_model(src: Path, dst: Path) -> None:
    """Copy a saved model (not its checkpoints or per-run logs) from ``src`` into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.name in _STAGE_ONLY or entry.name.startswith("checkpoint-"):
            continue
        target = dst / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target)


def combine(per_stage: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall results: 'before' is stage 1's baseline, 'after' the last stage's final evaluation;
    training figures and carbon are summed over the stages."""
    first, last = per_stage[0], per_stage[-1]
    trains = [s.get("train", {}) for s in per_stage]
    runtime = sum(t.get("runtime_s", 0.0) for t in trains)
    samples = sum(t.get("samples", 0) for t in trains)
    carbons = [s.get("carbon", {}) for s in per_stage]
    tracked = all(c.get("tracked") for c in carbons)
    carbon: dict[str, Any] = {
        "tracked": tracked,
        "energy_kwh": sum(c["energy_kwh"] for c in carbons) if tracked else None,
        "emissions_kg": sum(c["emissions_kg"] for c in carbons) if tracked else None,
        "duration_s": sum(c.get("duration_s") or 0.0 for c in carbons),
        "country_iso_code": carbons[0].get("country_iso_code"),
    }
    if not tracked:
        carbon["note"] = next((c.get("note") for c in carbons if c.get("note")), "not tracked in every stage")
    return {
        "stages": per_stage,
        "dims": last["dims"],
        "before": first.get("before", {}),
        "after": last.get("after", {}),
        "primary_metric": {**first.get("primary_metric", {}), **last.get("primary_metric", {})},
        "carbon": carbon,
        "train": {
            "steps": sum(t.get("steps", 0) for t in trains),
            "samples": samples,
            "runtime_s": round(runtime, 3),
            "samples_per_second": round(samples / runtime, 3) if runtime else 0.0,
            "final_loss": trains[-1].get("final_loss"),
        },
        "precision": last.get("precision"),
        "batch_sampler": last.get("batch_sampler"),
        "wall_time_s": round(sum(s.get("wall_time_s", 0.0) for s in per_stage), 2),
    }


def check_stages(config: RunConfig) -> Any:
    """`mtrain check` for every stage; one report, each stage's lines under a heading."""

    report = CheckReport(resolved=dump_resolved(config))
    for stage in expand(config, for_check=True):
        sub = check(stage.config)
        start = (
            "the base model"
            if stage.index == 0
            else f"stage {stage.index}'s output (checked with the base model's architecture)"
        )
        report.lines.append(
            f"--- {stage.label.capitalize()}: starts from {start}; writes {stage.config.training.output_dir}"
        )
        report.lines += sub.lines
        report.warnings += [f"stages.{stage.index}: {w}" for w in sub.warnings]
        report.problems += [
            Problem(f"stages.{stage.index}.{p.where}" if p.where else f"stages.{stage.index}", p.message)
            for p in sub.problems
        ]
    return report
