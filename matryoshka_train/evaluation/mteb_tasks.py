"""MTEB tasks as a per-dim evaluator (``type: mteb``), through the optional ``mteb`` package.

A config names tasks the way MTEB does (``tasks: [STS17]``, with optional ``languages``,
``subsets`` and ``splits`` filters), or points at a task class of its own as
``path/to/file.py:ClassName`` or ``package.module:ClassName`` (an ``mteb`` ``AbsTask`` subclass with
its own ``load_data``: how private or offline data is evaluated). Everything happens in three steps,
like the other evaluators:

1. :func:`resolve_tasks` (no model; ``check``, ``run`` and ``eval``): the package is installed, each
   task exists and its filters leave something to evaluate;
2. :func:`mteb_spec` (``run`` and ``eval``): every task's data is loaded once, before training;
3. :class:`MtebEvaluator`, one per dim: ``mteb.evaluate`` on the model with embeddings cut to that
   dim. Inside :class:`~.evaluators.MatryoshkaEvaluator` the model's ``encode`` is served from the
   shared full-size encodings, so each text is encoded once for all dims and precisions.

Each task's main score is recorded as ``<Task>_<main score>`` (e.g. ``STS17_cosine_spearman``, the
mean over the evaluated subsets and splits) and, when a task has several, one per subset
(``STS17_ar-ar_cosine_spearman``; ``_<split>`` is added when several splits are evaluated). mteb
writes no results cache here (``cache=None``); its import-time cache folder is pointed at a temp
directory unless ``MTEB_CACHE`` is set.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.messages import did_you_mean
from ..errors import ConfigError, DataError, Problem
from .evaluators import EvalSpec

if TYPE_CHECKING:  # pragma: no cover
    from ..config.schema import EvaluatorConfig

EXTRA = "mteb"


def missing_package_problem(where: str) -> Problem | None:
    """``type: mteb`` without the package installed: one line naming the extra."""
    if importlib.util.find_spec("mteb") is not None:
        return None
    return Problem(
        f"{where}.type",
        f"the mteb evaluator needs the mteb package, which is not installed; "
        f"pip install 'matryoshka-train[{EXTRA}]' (or pip install mteb)",
    )


def _mteb() -> Any:
    """The mteb module. Importing it creates its results-cache folder, so point that at a temp
    directory (unless the user chose one): nothing is written into the working directory or home."""
    os.environ.setdefault("MTEB_CACHE", str(Path(tempfile.gettempdir()) / "mtrain-mteb-cache"))
    import mteb  # optional extra: mteb (heavy import, only for type: mteb)

    return mteb


def resolve_tasks(cfg: EvaluatorConfig, where: str) -> list[Any]:
    """The configured tasks as mteb task objects, filtered by ``languages``/``subsets``/``splits``
    (their data is not loaded). Raises ConfigError naming every task that cannot be used."""
    mteb = _mteb()
    problems: list[Problem] = []
    tasks = []
    for i, entry in enumerate(cfg.tasks or []):
        at = f"{where}.tasks.{i}"
        try:
            task = _custom_task(entry, at) if ":" in entry else _named_task(mteb, entry, cfg, at)
            if ":" in entry:
                task = _filter(task, cfg, entry, at)
            tasks.append(task)
        except ConfigError as exc:
            problems += exc.problems
    names = [t.metadata.name for t in tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(Problem(f"{where}.tasks", f"MTEB task(s) listed twice: {', '.join(repeated)}; list each once"))
    if problems:
        raise ConfigError(problems)
    return tasks


def _named_task(mteb: Any, name: str, cfg: EvaluatorConfig, where: str) -> Any:
    try:
        task = mteb.get_task(name)
    except KeyError as exc:
        close = re.search(r"Did you mean: '([^']+)'", str(exc))  # mteb's own suggestion over its registry
        hint = did_you_mean(name, [close.group(1)]) if close else ""
        raise ConfigError(
            f"unknown MTEB task '{name}': use a name from mteb.get_tasks() "
            f"or 'file.py:ClassName' for a task of your own{hint}",
            where=where,
        ) from None
    return _filter(task, cfg, name, where)


def _filter(task: Any, cfg: EvaluatorConfig, name: str, where: str) -> Any:
    """Apply the evaluator's splits, languages and subsets filters to one task, checking each
    leaves something: an unknown split or subset is a mistake, not an empty result."""
    if cfg.splits:
        unknown = [s for s in cfg.splits if s not in task.metadata.eval_splits]
        if unknown:
            raise ConfigError(f"MTEB task '{name}' has no split {', '.join(unknown)}; its evaluation splits: "
                              f"{', '.join(task.metadata.eval_splits)}", where=where)
        task = task.filter_eval_splits(cfg.splits)
    known_subsets = list(task.metadata.hf_subsets)
    if cfg.subsets:
        unknown = [s for s in cfg.subsets if s not in known_subsets]
        if unknown:
            raise ConfigError(f"MTEB task '{name}' has no subset {', '.join(unknown)}; its subsets: "
                              f"{', '.join(known_subsets)}", where=where)
    if cfg.languages or cfg.subsets:
        try:
            task = task.filter_languages(cfg.languages, hf_subsets=cfg.subsets)
        except ValueError:
            raise ConfigError(
                f"MTEB task '{name}' has no subset for languages {', '.join(cfg.languages or [])}; its subsets: "
                f"{', '.join(known_subsets)} (languages are ISO 639-3 codes such as ara, eng or ara-Arab)",
                where=where,
            ) from None
    return task


def _custom_task(entry: str, where: str) -> Any:
    """``file.py:Class`` (a path, relative to the working directory) or ``module:Class``: an mteb
    AbsTask subclass of the user's, instantiated."""
    mteb = _mteb()
    source, _, class_name = entry.rpartition(":")
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"no task file {path} (relative paths start at {Path.cwd()})", where=where)
        module_name = f"mtrain_mteb_task_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as exc:
            raise ConfigError(f"cannot import the task module '{source}' ({exc}); use 'file.py:ClassName' "
                              "or put the module on PYTHONPATH", where=where) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, mteb.AbsTask)):
        raise ConfigError(f"'{class_name}' in {source} is not an mteb task class (a subclass of mteb.AbsTask, "
                          "e.g. AbsTaskSTS, with a TaskMetadata)", where=where)
    return cls()


def mteb_spec(cfg: EvaluatorConfig, where: str, batch_size: int, tasks: list[Any] | None = None) -> EvalSpec:
    """An EvalSpec for ``type: mteb``: every task's data loaded now (once, for every dim and every
    evaluation of the run)."""
    tasks = tasks if tasks is not None else resolve_tasks(cfg, where)
    for task in tasks:
        if task.data_loaded:
            continue
        try:
            task.load_data()
        except Exception as exc:  # noqa: BLE001 - datasets/hub raise many types when offline or denied
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"cannot load the data of MTEB task '{task.metadata.name}' ({first[:200]}); hub-backed tasks "
                "need network access the first time (then the datasets cache serves them)",
                where=where,
            ) from None
    bs = cfg.batch_size or batch_size

    def build(dim: int) -> MtebEvaluator:
        return MtebEvaluator(tasks, dim, bs)

    return EvalSpec(cfg.display_name(), "mteb", build)


class MtebEvaluator:
    """Runs ``tasks`` with ``mteb.evaluate`` on a SentenceTransformer whose embeddings are cut to
    ``dim``; returns ``{"<Task>_<main score>": value, …}``. Callable like a sentence-transformers
    evaluator (``primary_metric`` is the first task's main score)."""

    name = ""  # metric keys carry no prefix of their own

    def __init__(self, tasks: list[Any], dim: int, batch_size: int):
        self.tasks = tasks
        self.dim = dim
        self.batch_size = batch_size
        first = tasks[0].metadata
        self.primary_metric = f"{first.name}_{first.main_score}"

    def __call__(self, model: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        mteb = _mteb()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # mteb calls renamed sentence-transformers methods
            result = mteb.evaluate(
                _dim_wrapper_class()(model, self.dim),
                self.tasks,
                encode_kwargs={"batch_size": self.batch_size, "show_progress_bar": False},
                cache=None,
                co2_tracker=False,  # our carbon meter measures the whole run; a nested tracker would double count
                show_progress_bar=False,
                overwrite_strategy="always",
            )
        metrics: dict[str, float] = {}
        for task, task_result in zip(self.tasks, result.task_results):
            metrics.update(task_scores(task.metadata.name, task.metadata.main_score, task_result.scores))
        return metrics


def task_scores(task: str, main_score: str, scores: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """One task's main scores from mteb's ``{split: [{"hf_subset": …, "main_score": …}, …]}``: the mean
    as ``<task>_<main_score>``, and each subset (and split, when several) when there are several."""
    entries = [(split, row["hf_subset"], float(row["main_score"])) for split, rows in scores.items() for row in rows]
    out = {f"{task}_{main_score}": sum(v for _, _, v in entries) / len(entries)}
    if len(entries) > 1:
        several_splits = len(scores) > 1
        for split, subset, value in entries:
            label = f"{subset}_{split}" if several_splits else subset
            out[f"{task}_{label}_{main_score}"] = value
    return out


@functools.cache
def _dim_wrapper_class() -> type:
    """mteb's SentenceTransformer wrapper, encoding with ``truncate_dim``. Built on first use,
    because it subclasses a class of the optional package."""
    mteb = _mteb()

    class AtDim(mteb.SentenceTransformerEncoderWrapper):
        """mteb's own wrapper (prompts, query/document encoding, similarity), cut to one dim."""

        def __init__(self, model: Any, dim: int):
            super().__init__(model)
            self.dim = dim

        def encode(self, inputs: Any, **kwargs: Any) -> Any:
            return super().encode(inputs, truncate_dim=self.dim, **kwargs)

    return AtDim
