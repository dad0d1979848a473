"""`mtrain check`: everything `mtrain run` would verify before training, without training.

Local files and models are read; hub sources are tried only when the hub answers, and are
otherwise reported as "not verified offline" (a warning, not a failure).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .config import RunConfig, dump_resolved
from .errors import Problem, UserError

_HUB_STATE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint (cached). Must run before huggingface_hub is imported
    if its answer is to switch the process to offline mode."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    if "ok" not in _HUB_STATE:
        endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        try:
            socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
            _HUB_STATE["ok"] = True
        except OSError:
            _HUB_STATE["ok"] = False
    return _HUB_STATE["ok"]


def go_offline_if_unreachable() -> bool:
    """Switch to offline mode when the hub does not answer, so hub look-ups fail at once instead of
    retrying for half a minute. Returns whether the hub is reachable."""
    ok = hub_reachable()
    if not ok:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    return ok


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(config: RunConfig) -> CheckReport:
    """Verify a validated config against its model and data; never raises for user errors."""
    from .data import HubUnavailable, prepare_dataset
    from .losses import LOSSES
    from .models import is_local, load_model, resolve_dims
    from .training import batch_lines

    report = CheckReport()
    report.lines.append("Resolved config:\n" + _indent(dump_resolved(config)))

    # model and dims
    embedding_dim = None
    if is_local(config.model.name_or_path) or hub_reachable():
        try:
            model = load_model(config.model)
            embedding_dim = model.get_embedding_dimension()
            report.lines.append(f"Model: {config.model.name_or_path} · embedding size {embedding_dim}")
        except UserError as exc:
            report.problems += exc.problems
    else:
        report.warnings.append(f"model: {config.model.name_or_path} is on the hub: not verified offline")
    try:
        dims = resolve_dims(config.matryoshka, embedding_dim)
        report.lines.append(f"Matryoshka dims: {dims}" + ("" if embedding_dim else " (sizes not verified offline)"))
    except UserError as exc:
        report.problems += exc.problems

    report.problems += config_problems(config)

    # datasets and their losses
    columns: dict[str, list[str]] = {}
    for i, dcfg in enumerate(config.datasets):
        lcfg = config.loss_for(dcfg)
        if dcfg.source.hub and not hub_reachable():
            report.warnings.append(f"datasets.{i} ({dcfg.name}): {dcfg.source.describe()} not verified offline")
            continue
        try:
            prepared = prepare_dataset(dcfg, i, config.training.seed, lcfg.name)
        except HubUnavailable:
            report.warnings.append(f"datasets.{i} ({dcfg.name}): {dcfg.source.describe()} not verified offline")
            continue
        except UserError as exc:
            report.problems += exc.problems
            continue
        columns[dcfg.name] = prepared.columns
        n_eval = len(prepared.eval) if prepared.eval is not None else 0
        report.lines.append(
            f"Dataset {dcfg.name}: {len(prepared.train)} train / {n_eval} eval rows · columns "
            f"{prepared.columns} · loss {lcfg.name}" + (" (Matryoshka)" if lcfg.matryoshka else "")
            + "".join(f" · {n}" for n in prepared.notes)
        )
        report.problems += label_width_problems(prepared, i, embedding_dim, LOSSES[lcfg.name].inputs)
        if len(prepared.train) < config.training.per_device_train_batch_size:
            report.warnings.append(
                f"datasets.{i} ({dcfg.name}): {len(prepared.train)} rows is less than one batch "
                f"({config.training.per_device_train_batch_size})"
            )

    # evaluators with their own files
    for i, ecfg in enumerate(config.evaluation.evaluators):
        if ecfg.type == "nanobeir" or ecfg.beir is not None:
            kind, problems = retrieval_check(ecfg, i)
            report.warnings += [kind] if kind else []
            report.problems += problems
            continue
        if ecfg.source is None:
            continue
        if ecfg.source.hub and not hub_reachable():
            report.warnings.append(f"evaluation.evaluators.{i}: {ecfg.source.describe()} not verified offline")
            continue
        report.problems += _evaluator_source_problems(ecfg, i)

    report.lines += batch_lines(config, columns)
    return report


def config_problems(config: RunConfig) -> list[Problem]:
    """Checks that need neither the model nor the data: loss arguments, batch sizes, trainer fields.
    `mtrain run` raises on these before it reads anything."""
    from .losses import LOSSES, kwargs_problems

    problems: list[Problem] = []
    t = config.training
    for i, dcfg in enumerate(config.datasets):
        lcfg = config.loss_for(dcfg)
        where = f"datasets.{i}.loss" if dcfg.loss else "loss"
        problems += [Problem(where, p) for p in kwargs_problems(lcfg)]
        spec = LOSSES[lcfg.name]
        if spec.in_batch_negatives and t.per_device_train_batch_size < 2:
            problems.append(Problem(
                "training.per_device_train_batch_size",
                f"{spec.class_name} uses in-batch negatives and needs a batch of at least 2",
            ))
        mini = lcfg.kwargs.get("mini_batch_size")
        if isinstance(mini, int) and mini > t.per_device_train_batch_size:
            problems.append(Problem(
                f"{where}.kwargs.mini_batch_size",
                f"mini_batch_size {mini} is larger than the batch ({t.per_device_train_batch_size}); make it smaller",
            ))
    return problems + _training_argument_problems(config) + _best_metric_problems(config)


def _best_metric_problems(config: RunConfig) -> list[Problem]:
    """training.metric_for_best_model must name a key the evaluator will produce."""
    from .evaluation import metric_name_problem

    metric = config.training.metric_for_best_model
    if metric is None:
        return []
    ev = config.evaluation
    names = [e.display_name() for e in ev.evaluators]
    problem = metric_name_problem(metric, names, ev.dims or config.matryoshka.dims, ev.dim_weights is not None)
    return [Problem("training.metric_for_best_model", problem)] if problem else []


def label_width_problems(prepared: Any, index: int, embedding_dim: int | None, inputs: str) -> list[Problem]:
    from .data import label_width

    if inputs != "embedding" or embedding_dim is None:
        return []
    width = label_width(prepared.train)
    if width is not None and width != embedding_dim:
        return [Problem(f"datasets.{index}", f"label embeddings have width {width} but the model's is {embedding_dim}")]
    return []


def retrieval_check(ecfg: Any, index: int) -> tuple[str | None, list[Problem]]:
    """(warning, problems) for a BEIR directory or NanoBEIR evaluator: the directory is read;
    NanoBEIR names are checked, and the sets themselves are reported as not verified offline."""
    from .beir import nanobeir_name_problem, read_beir

    where = f"evaluation.evaluators.{index}"
    if ecfg.type == "nanobeir":
        problem = nanobeir_name_problem(ecfg)
        if problem:
            return None, [Problem(f"{where}.datasets", problem)]
        if not hub_reachable():
            return f"{where}: NanoBEIR ({', '.join(ecfg.datasets or ['all sets'])}) not verified offline", []
        return None, []
    try:
        read_beir(ecfg.beir, ecfg.split, f"{where}.beir", ecfg.limit)
    except UserError as exc:
        return None, exc.problems
    return None, []


def _evaluator_source_problems(ecfg: Any, index: int) -> list[Problem]:
    from .data import HubUnavailable, read_source, select_columns
    from .evaluation import columns_for

    where = f"evaluation.evaluators.{index}"
    try:
        rows = select_columns(read_source(ecfg.source, f"{where}.source"), ecfg.columns, where)
        columns_for(rows, ecfg.type, where)
    except HubUnavailable:
        return []
    except UserError as exc:
        return exc.problems
    return []


def _training_argument_problems(config: RunConfig) -> list[Problem]:
    import dataclasses

    from sentence_transformers import SentenceTransformerTrainingArguments

    fields = {f.name for f in dataclasses.fields(SentenceTransformerTrainingArguments)}
    problems = []
    for key in config.training.extra:
        if key not in fields:
            import difflib

            near = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            problems.append(Problem(f"training.extra.{key}", f"not a SentenceTransformerTrainingArguments field{hint}"))
    return problems


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines())
