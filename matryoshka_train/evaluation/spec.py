"""Evaluator data: the rows each configured evaluator reads, checked, and the evaluator built on them.

Resolving (:func:`resolve_evaluators`) reads every evaluator's rows (a dataset's eval split, a
source, a BEIR directory) and checks them the way building will use them: the columns its type
reads, scores that are numbers, MSE targets. It needs no model, so ``mtrain check``, ``mtrain run``
and ``mtrain eval`` all call it; building (:func:`build_matryoshka_evaluator`) only adds what
needs a model (the MSE teacher's targets) and the per-dim evaluators.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sentence_transformers.sentence_transformer import evaluation as ste

from ..data.sources import (
    HubUnavailable,
    label_column,
    read_source,
    rows_named,
    select_columns,
    text_columns,
)
from ..errors import ConfigError, DataError, Problem, UserError
from .beir import BeirData, nanobeir_name_problem, read_beir, retrieval_spec
from .evaluators import EvalSpec, MatryoshkaEvaluator
from .mteb_tasks import missing_package_problem, mteb_spec, resolve_tasks

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset

    from ..config.schema import EvaluationConfig, EvaluatorConfig

EVALUATOR_COLUMNS = {
    "triplet": ("anchor", "positive", "negative"),
    "sts": ("sentence1", "sentence2", "score"),
    "mse": ("sentence",),
    "retrieval": ("query", "document"),
}


@dataclass
class EvaluatorData:
    """One configured evaluator with its checked inputs: ``columns`` (role -> values) for rows,
    ``beir`` for a BEIR directory, ``tasks`` for MTEB tasks; none for NanoBEIR (read by name when built)."""

    cfg: EvaluatorConfig
    where: str
    columns: dict[str, list] | None = None
    beir: BeirData | None = None
    tasks: list[Any] | None = None  # mteb: the task objects (data loaded when built)


@dataclass
class ResolvedEvaluators:
    """Every evaluator that could be resolved, what could not be verified (hub sources offline),
    and every problem found."""

    evaluators: list[EvaluatorData] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def resolve_evaluators(
    evaluation: EvaluationConfig,
    eval_rows: dict[str, Dataset | None],
    hub_ok: bool = True,
    teacher_labelled: set[str] | frozenset[str] = frozenset(),
) -> ResolvedEvaluators:
    """Read and check every evaluator's rows. ``eval_rows`` maps a training dataset's name to its
    eval split (missing when that dataset could not be read: its problem is reported already).
    With ``hub_ok`` false, hub sources and NanoBEIR sets are listed as unverified instead of read.
    ``teacher_labelled`` names the datasets whose labels the distillation teacher provides (`check`
    does not compute them; `run` has them by the time evaluators are resolved)."""
    out = ResolvedEvaluators()
    for i, ecfg in enumerate(evaluation.evaluators):
        where = f"evaluation.evaluators.{i}"
        try:
            if ecfg.type == "nanobeir":
                problem = nanobeir_name_problem(ecfg)
                if problem:
                    raise ConfigError(problem, where=f"{where}.datasets")
                if not hub_ok:
                    out.unverified.append(f"{where}: NanoBEIR ({', '.join(ecfg.datasets or ['all sets'])}) "
                                          "not verified offline")
                out.evaluators.append(EvaluatorData(ecfg, where))
            elif ecfg.type == "mteb":
                missing = missing_package_problem(where)
                if missing:
                    raise ConfigError([missing])
                tasks = resolve_tasks(ecfg, where)
                if not hub_ok and any(":" not in t for t in ecfg.tasks or []):
                    out.unverified.append(f"{where}: MTEB task data ({', '.join(ecfg.tasks or [])}) not verified "
                                          "offline")
                out.evaluators.append(EvaluatorData(ecfg, where, tasks=tasks))
            elif ecfg.beir is not None:
                out.evaluators.append(
                    EvaluatorData(ecfg, where, beir=read_beir(ecfg.beir, ecfg.split, f"{where}.beir", ecfg.limit))
                )
            elif ecfg.dataset is not None:
                if ecfg.dataset in eval_rows and eval_rows[ecfg.dataset] is not None:
                    labelled = ecfg.dataset in teacher_labelled
                    columns = evaluator_columns(ecfg, eval_rows[ecfg.dataset], where, labels_follow=labelled)
                    out.evaluators.append(EvaluatorData(ecfg, where, columns))
            elif ecfg.source.hub and not hub_ok:
                out.unverified.append(f"{where}: {ecfg.source.describe()} not verified offline")
            else:
                try:
                    rows = select_columns(read_source(ecfg.source, f"{where}.source"), ecfg.columns, where)
                except HubUnavailable as exc:
                    raise DataError([exc.problem(f"{where}.source", ecfg.source.describe())]) from None
                out.evaluators.append(EvaluatorData(ecfg, where, evaluator_columns(ecfg, rows, where)))
        except UserError as exc:
            out.problems += exc.problems
    names = [e.display_name() for e in evaluation.evaluators]
    if len(set(names)) != len(names):
        out.problems.append(
            Problem("evaluation.evaluators", "two evaluators share a name; give each a distinct 'name'")
        )
    return out


def evaluator_columns(cfg: EvaluatorConfig, rows: Dataset, where: str, labels_follow: bool = False) -> dict[str, list]:
    """The evaluator's inputs from its rows (``limit`` applied), checked: an STS score column
    must hold numbers (rescaled with ``score_range``); an MSE evaluator needs a teacher or labels
    (or ``labels_follow``: the distillation teacher adds them)."""
    if cfg.limit is not None and cfg.limit < len(rows):
        rows = rows.select(range(cfg.limit))
    cols = columns_for(rows, cfg.type, where)
    if cfg.type == "sts":
        cols["score"] = _scores(cols["score"], cfg.score_range, where)
    if cfg.type == "mse" and cfg.teacher is None and "label" not in cols and not labels_follow:
        raise ConfigError("an mse evaluator needs a teacher model or a 'label' embedding column", where=where)
    return cols


def _scores(values: list, score_range: tuple[float, float] | None, where: str) -> list[float]:
    bad = [i for i, v in enumerate(values) if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise DataError(
            f"the score column must hold a number in every row, but {len(bad)} do not "
            f"({rows_named(bad)}; e.g. {repr(values[bad[0]])[:40]}); fix or remove those rows",
            where=where,
        )
    scores = np.asarray(values, dtype=float)
    if score_range is not None:
        low, high = score_range
        if high <= low:
            raise ConfigError("score_range must be [low, high] with low < high", where=f"{where}.score_range")
        scores = (scores - low) / (high - low)
    return scores.tolist()


def columns_for(ds: Dataset, kind: str, where: str) -> dict[str, list]:
    """Pick the evaluator's inputs from ``ds``: by role name when present, else by position."""
    roles = EVALUATOR_COLUMNS[kind]
    texts, label = text_columns(ds), label_column(ds)
    out: dict[str, list] = {}
    positional = iter([c for c in texts if c not in roles])
    for role in roles:
        if role in ds.column_names:
            out[role] = list(ds[role])
        elif role == "score" and label is not None:
            out[role] = list(ds[label])
        else:
            column = next(positional, None)
            if column is None:
                need = ", ".join(roles)
                raise DataError(
                    f"a {kind} evaluator needs columns {need}; the data has: {', '.join(ds.column_names)}", where=where
                )
            out[role] = list(ds[column])
    if kind == "mse" and label is not None:
        out["label"] = list(ds[label])
    return out


class _FixedEmbeddings:
    """Stands in for a teacher model when the target embeddings are already in the data."""

    def __init__(self, embeddings: np.ndarray):
        self.embeddings = embeddings

    def encode(self, inputs: Any, truncate_dim: int | None = None, **kwargs: Any) -> np.ndarray:
        return self.embeddings[..., :truncate_dim] if truncate_dim else self.embeddings


def build_spec(data: EvaluatorData, batch_size: int, teacher: Any = None) -> EvalSpec:
    """An :class:`EvalSpec` for one resolved evaluator."""
    cfg, cols = data.cfg, data.columns or {}
    if cfg.type == "mteb":
        return mteb_spec(cfg, data.where, batch_size, data.tasks)
    if cfg.type == "nanobeir" or data.beir is not None:
        return retrieval_spec(cfg, data.where, batch_size, data.beir)
    name = cfg.display_name()
    bs = cfg.batch_size or batch_size
    common = {"name": name, "batch_size": bs, "write_csv": False}

    if cfg.type == "triplet":

        def build(dim: int) -> Any:
            return ste.TripletEvaluator(cols["anchor"], cols["positive"], cols["negative"], truncate_dim=dim, **common)
    elif cfg.type == "sts":

        def build(dim: int) -> Any:
            return ste.EmbeddingSimilarityEvaluator(
                cols["sentence1"], cols["sentence2"], cols["score"], truncate_dim=dim, **common
            )
    elif cfg.type == "retrieval":
        queries, corpus, relevant = _retrieval_inputs(cols["query"], cols["document"])

        def build(dim: int) -> Any:
            return ste.InformationRetrievalEvaluator(queries, corpus, relevant, truncate_dim=dim, **common)
    else:  # mse
        sentences = cols["sentence"]
        if teacher is not None:  # encode once at full size; every dim slices it
            targets = _FixedEmbeddings(teacher.encode(sentences, batch_size=bs, convert_to_numpy=True))
        else:
            targets = _FixedEmbeddings(np.asarray(cols["label"], dtype=np.float32))

        def build(dim: int) -> Any:
            return ste.MSEEvaluator(sentences, sentences, teacher_model=targets, truncate_dim=dim, **common)

    return EvalSpec(name, cfg.type, build)


def build_matryoshka_evaluator(
    evaluation: EvaluationConfig,
    resolved: list[EvaluatorData],
    dims: list[int],
    batch_size: int,
    teachers: Mapping[str, Any],
) -> MatryoshkaEvaluator | None:
    """The evaluator for an ``evaluation`` section (None when it lists no evaluators), over the
    evaluators :func:`resolve_evaluators` returned; ``teachers`` maps an MSE evaluator's YAML path
    (``evaluation.evaluators.<i>``) to its loaded teacher; ``dims`` are used unless ``evaluation.dims`` is set."""
    if not resolved:
        return None
    specs = []
    for data in resolved:
        teacher = teachers.get(data.where) if data.cfg.teacher else None
        specs.append(build_spec(data, batch_size, teacher))
    return MatryoshkaEvaluator(specs, evaluation.dims or dims, evaluation.precisions, evaluation.dim_weights)


def _retrieval_inputs(queries: list[str], documents: list[str]) -> tuple[dict, dict, dict]:
    """Rows of (query, relevant document) -> the id-keyed dicts the IR evaluator takes.
    Equal texts share one id, so a query with several rows has several relevant documents."""
    corpus_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for q, d in zip(queries, documents):
        qid = query_ids.setdefault(q, f"q{len(query_ids)}")
        did = corpus_ids.setdefault(d, f"d{len(corpus_ids)}")
        relevant.setdefault(qid, set()).add(did)
    return {v: k for k, v in query_ids.items()}, {v: k for k, v in corpus_ids.items()}, relevant
