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
    from .distill import takes_teacher_labels
    from .losses import LOSSES
    from .models import is_local, load_model, resolve_dims
    from .training import batch_lines

    report = CheckReport()
    report.lines.append("Resolved config:\n" + _indent(dump_resolved(config)))

    # model and dims
    embedding_dim = None
    model = None
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
            prepared = prepare_dataset(dcfg, i, config.training.seed, lcfg.name,
                                       labels_from_teacher=takes_teacher_labels(config, dcfg))
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
        too_small, warnings = batch_size_problems(config, i, len(prepared.train))
        report.problems += too_small
        report.warnings += warnings
        if dcfg.columns is None and LOSSES[lcfg.name].in_batch_negatives and len(prepared.columns) > 2:
            report.warnings.append(
                f"datasets.{i} ({dcfg.name}): no columns listed, so all {len(prepared.columns)} are used in file order "
                f"({', '.join(prepared.columns)}): the first is the anchor, the second the positive, the rest hard "
                "negatives; list the ones to use in datasets[].columns"
            )
        if model is not None:
            report.lines += long_text_lines(prepared, i, model)

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

    # other models the run loads: distillation teacher, evaluator teachers, GIST guides
    _check_other_models(config, report, embedding_dim)
    report.lines += batch_lines(config, columns)
    return report


def _check_other_models(config: RunConfig, report: CheckReport, embedding_dim: int | None) -> None:
    """Load each extra model that is local (hub ones are 'not verified offline'); the distillation
    teacher's embedding width must equal the student's, since its embeddings are the labels."""
    from .models import is_local, load_model

    refs = []
    if config.distill is not None:
        refs.append(("distill.teacher", config.distill.teacher, True))
    for i, ecfg in enumerate(config.evaluation.evaluators):
        if ecfg.teacher:
            refs.append((f"evaluation.evaluators.{i}.teacher", config.model.model_copy(
                update={"name_or_path": ecfg.teacher, "type": "pretrained", "layers": None}), False))
    for i, dcfg in enumerate(config.datasets):
        guide = config.loss_for(dcfg).guide_model
        if guide:
            where = f"datasets.{i}.loss.guide_model" if dcfg.loss else "loss.guide_model"
            refs.append((where, config.model.model_copy(
                update={"name_or_path": guide, "type": "pretrained", "layers": None}), False))
    for where, mcfg, is_teacher in refs:
        if not (is_local(mcfg.name_or_path) or hub_reachable()):
            report.warnings.append(f"{where}: {mcfg.name_or_path} is on the hub: not verified offline")
            continue
        try:
            width = load_model(mcfg).get_embedding_dimension()
        except UserError as exc:
            report.problems += [Problem(where, p.message) for p in exc.problems]
            continue
        report.lines.append(f"{where}: {mcfg.name_or_path} · embedding size {width}")
        if is_teacher and embedding_dim is not None and width != embedding_dim:
            report.problems.append(Problem(
                where, f"the teacher's embeddings have width {width} but the student's {embedding_dim}; "
                "pick a teacher and student of the same width (MSELoss compares them directly)",
            ))


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
        if "mini_batch_size" in lcfg.kwargs and (not isinstance(mini, int) or isinstance(mini, bool) or mini < 1):
            problems.append(Problem(f"{where}.kwargs.mini_batch_size", f"must be a whole number of rows >= 1, got {mini!r}"))
        elif isinstance(mini, int) and mini > t.per_device_train_batch_size:
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
    """MSE distillation: every label embedding must be as wide as the model's embeddings."""
    from .data import label_widths, rows_named

    if inputs != "embedding" or embedding_dim is None:
        return []
    wrong = {w: rows for w, rows in label_widths(prepared.train).items() if w != embedding_dim}
    if not wrong:
        return []
    width, rows = next(iter(wrong.items()))
    return [Problem(
        f"datasets.{index}",
        f"label embeddings in {prepared.source} have width {width} ({rows_named(rows)}"
        + (f"; {sum(map(len, wrong.values())) - len(rows)} more rows have other wrong widths" if len(wrong) > 1 else "")
        + f") but the model's is {embedding_dim}; compute the labels with a teacher of width {embedding_dim}, "
        "or train a model of that width",
    )]


def batch_size_problems(config: RunConfig, index: int, rows: int) -> tuple[list[Problem], list[str]]:
    """A dataset smaller than one batch: an error when dataloader_drop_last leaves it no batch at
    all, a warning otherwise (its only batch is smaller, so in-batch losses see fewer negatives)."""
    t = config.training
    batch = t.per_device_train_batch_size * int(os.environ.get("WORLD_SIZE", "1"))
    if rows >= batch:
        return [], []
    name = config.datasets[index].name
    if t.dataloader_drop_last:
        return [Problem(
            f"datasets.{index}",
            f"{name} has {rows} training rows, fewer than one batch ({batch}), and training.dataloader_drop_last "
            "drops that partial batch, leaving nothing to train on; add rows, lower "
            "training.per_device_train_batch_size, or set dataloader_drop_last: false",
        )], []
    return [], [f"datasets.{index} ({name}): {rows} rows is less than one batch ({batch}); every step sees a smaller batch"]


def long_text_lines(prepared: Any, index: int, model: Any) -> list[str]:
    """How many rows are longer than the model reads (they are truncated, not dropped)."""
    from .data import long_text_counts

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
