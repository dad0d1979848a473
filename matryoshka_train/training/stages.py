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

import yaml

from ..config.loading import dump_resolved, merge_stage, validate
from ..config.schema import RunConfig
from ..errors import ConfigError, Problem
from ..reporting import redact
from ..reporting.card import finish_front_matter
from ..reporting.publish import hub_lines
from ..reporting.report import add_model_card_section, results_table
from . import distributed
from .check import SAVE_STEPS_IGNORED, CheckReport, check, save_warnings
from .checkpoints import last_checkpoint
from .loop import card_base, guard_output_dir, run_single
from .resume import RESOLVED, changed_keys

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
            if config.card.base_model is None and config.model.type != "static":
                # the card names the model stage 1 started from, not the previous stage's folder
                raw["card"]["base_model"] = config.model.name_or_path
        stages.append(Stage(i, scfg.name, validate(raw)))
        previous = here
    return stages


def run_stages(
    config: RunConfig,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    resume: str | bool | None = None,
    resume_force: bool = False,
    resume_hint: str | None = None,
) -> dict[str, Any]:
    """Run every stage in order, then write the final model and the combined results.json.

    Under several processes every process runs every stage; a barrier after each stage keeps the
    next one from loading a model the main process has not finished writing, and only the main
    process prints and writes the combined outputs (the others return ``{}``).

    ``resume``: the stages already complete (:func:`completed_stage`) are skipped, the first other
    one resumes from its newest complete checkpoint (or ``resume`` when it is a path; or starts
    again when it saved none), and the rest run as new."""
    distributed.init()
    main = distributed.is_main()
    say = echo if main else (lambda _: None)
    out = Path(config.training.output_dir)
    stages = expand(config)
    if resume is None:
        guard_output_dir(out, overwrite)
        done: dict[int, dict[str, Any]] = {}
    else:
        done = completed_stages(stages, resume_force, say)
    distributed.barrier()  # every process has checked before the main one writes anything
    per_stage = []
    resumed = False
    for stage in stages:
        here = stage.config.training.output_dir
        if stage.index in done:
            say(f"\n=== {stage.label.capitalize()} of {len(stages)}: complete in {here}; skipped")
            results = done[stage.index]
        else:
            say(f"\n=== {stage.label.capitalize()} of {len(stages)} → {here}")
            kwargs: dict[str, Any] = {"overwrite": overwrite}
            if resume is not None and not resumed:
                resumed = True
                if stage.index == 0 or isinstance(resume, str) or last_checkpoint(Path(here)) is not None:
                    kwargs = {"resume": resume, "resume_force": resume_force}
                else:  # stopped before its first checkpoint: this stage starts again
                    say(f"{stage.label.capitalize()} saved no checkpoint; it starts again")
                    kwargs = {"overwrite": True}
            elif resume is not None:
                kwargs = {"overwrite": True}  # a later stage of a resumed run: whatever is there is stale
            results = run_single(stage.config, echo=echo, resume_hint=resume_hint, **kwargs)
            distributed.barrier()  # the main process has written this stage's model before the next loads it
        per_stage.append({"stage": stage.index + 1, "name": stage.name, "output_dir": here, **results})

    if not main:
        return {}
    final = Path(stages[-1].config.training.output_dir)
    copy_model(final, out)
    combined = combine(per_stage)
    redact.write_text(out / "results.json", json.dumps(combined, indent=2))
    redact.write_text(out / "config.resolved.yaml", dump_resolved(config))
    add_model_card_section(out / "README.md", config, combined)
    base = card_base(config)
    finish_front_matter(out / "README.md", config, combined, base.hub_id, base.label)
    redact.scrub_tree(out)  # the copied model card and files other libraries wrote
    say(f"\n=== All {len(stages)} stages: before = {stages[0].label}'s base model, after = the final model")
    say(results_table(combined))
    say(f"\nFinal model and combined results.json written to {out}; each stage's outputs are in its stage-N folder")
    return combined


def completed_stage(stage: Stage) -> dict[str, Any] | None:
    """The results of ``stage`` when its run finished (results.json and the saved model are in its
    directory), else None."""
    here = Path(stage.config.training.output_dir)
    try:
        results = json.loads((here / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    weights = [p for p in here.rglob("*")
               if p.suffix in (".safetensors", ".bin") and "checkpoint-" not in str(p.relative_to(here))]
    if not isinstance(results, dict) or "dims" not in results or not weights or not (here / "modules.json").is_file():
        return None
    return results


def completed_stages(stages: list[Stage], force: bool, echo: Callable[[str], None]) -> dict[int, dict[str, Any]]:
    """The leading stages that finished, by index, with their results; each must have run with the
    config it has now (as a resumed checkpoint must, see :func:`.resume.check_same_run`)."""
    done: dict[int, dict[str, Any]] = {}
    for stage in stages:
        results = completed_stage(stage)
        if results is None:
            break
        here = Path(stage.config.training.output_dir)
        saved = yaml.safe_load((here / RESOLVED).read_text(encoding="utf-8")) if (here / RESOLVED).is_file() else {}
        changes = changed_keys(saved or {}, yaml.safe_load(dump_resolved(stage.config)))
        if changes and not force:
            raise ConfigError(
                f"the config of {stage.label} changed since it finished in {here}, so resuming would not "
                "continue the same run: " + "; ".join(changes)
                + ". Undo the change(s), or pass --resume-force to continue anyway",
                where="--resume",
            )
        for change in changes:
            echo(f"Warning: resuming with a changed key (--resume-force): {stage.label}: {change}")
        done[stage.index] = results
    return done


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
        "hardware": carbons[-1].get("hardware"),
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
        "reference": last.get("reference"),  # compared with the final model: the last stage's "after"
        "wall_time_s": round(sum(s.get("wall_time_s", 0.0) for s in per_stage), 2),
    }


def check_stages(config: RunConfig) -> Any:
    """`mtrain check` for every stage; one report, each stage's lines under a heading."""

    report = CheckReport(resolved=dump_resolved(config))
    publish, publish_warnings = hub_lines(config.hub)
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
        report.lines += [line for line in sub.lines if line not in publish]  # said once, below
        # a stage's config has every key written out: whether save_steps was set is read from the YAML
        ignored = SAVE_STEPS_IGNORED.split("{")[0]
        explicit = set(config.training.model_fields_set) | set(config.stages[stage.index].training or {})
        warnings = [w for w in sub.warnings if not w.startswith(ignored) and w not in publish_warnings]
        warnings += save_warnings(stage.config, explicit)
        report.warnings += [f"stages.{stage.index}: {w}" for w in warnings]
        report.problems += [
            Problem(f"stages.{stage.index}.{p.where}" if p.where else f"stages.{stage.index}", p.message)
            for p in sub.problems
        ]
    report.lines += publish  # the final output is pushed once, after the last stage
    report.warnings += publish_warnings
    return report
