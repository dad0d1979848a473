"""Per-dimension evaluation.

:class:`MatryoshkaEvaluator` runs every configured sentence-transformers evaluator (triplet,
STS, retrieval, MSE) at every Matryoshka dim. The evaluators themselves are sentence-transformers'
own; what we add is (1) one evaluator instance per dim with ``truncate_dim`` set, (2) encoding each
list of texts once per call at full size and slicing it for every dim (otherwise a 9-dim run
encodes the eval set nine times), and (3) results nested as ``{evaluator: {dim: {metric: value}}}``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from .errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from .config import EvaluatorConfig

Results = dict[str, dict[str, dict[str, float]]]  # evaluator -> str(dim) -> metric -> value


# --------------------------------------------------------------------------------------------
# the evaluator the trainer calls


@dataclass
class EvalSpec:
    """One configured evaluator: its name, type and a factory building the ST evaluator for a dim."""

    name: str
    type: str
    build: Callable[[int], Any]


class MatryoshkaEvaluator(BaseEvaluator):
    """Callable like any sentence-transformers evaluator; returns flat metrics named
    ``<evaluator>_dim<d>_<metric>`` (the trainer prefixes ``eval_``) and keeps the nested form in
    :attr:`last_results`. :attr:`primary_metric` is the first evaluator's main metric at the
    full dim, which the trainer uses for ``load_best_model_at_end`` unless told otherwise.
    """

    def __init__(self, specs: list[EvalSpec], dims: list[int]):
        super().__init__()
        self.specs = specs
        self.dims = list(dims)
        self.evaluators = {(s.name, d): s.build(d) for s in specs for d in self.dims}
        self.primary: dict[str, str] = {}
        self.last_results: Results = {}
        self.primary_metric = ""

    def __call__(self, model: SentenceTransformer, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        results: Results = {}
        flat: dict[str, float] = {}
        with shared_encodings(model):
            for (name, dim), evaluator in self.evaluators.items():
                metrics = evaluator(model)
                prefix = f"{evaluator.name}_" if getattr(evaluator, "name", "") else ""
                clean = {k[len(prefix):] if k.startswith(prefix) else k: float(v) for k, v in metrics.items()}
                results.setdefault(name, {})[str(dim)] = clean
                primary = evaluator.primary_metric
                self.primary[name] = primary[len(prefix):] if primary.startswith(prefix) else primary
                for metric, value in clean.items():
                    flat[f"{name}_dim{dim}_{metric}"] = value
        self.last_results = results
        first = self.specs[0].name
        self.primary_metric = f"{first}_dim{self.dims[0]}_{self.primary[first]}"
        return flat

    @property
    def description(self) -> str:
        return "Matryoshka per-dimension evaluation"

    def get_config_dict(self) -> dict[str, Any]:
        return {"dims": self.dims, "evaluators": [s.name for s in self.specs]}


# --------------------------------------------------------------------------------------------
# encode once, slice per dim


@contextlib.contextmanager
def shared_encodings(*models: Any) -> Iterator[None]:
    """Inside the block each model encodes a given list of texts once, at full size, and any
    ``truncate_dim`` is served by slicing that result. The model is restored on exit."""
    names = ("encode", "encode_query", "encode_document")
    patched = []
    for model in models:
        if model is None or "encode" in vars(model):
            continue
        cache: dict[Any, Any] = {}
        for fn_name in names:
            setattr(model, fn_name, _cached(getattr(model, fn_name), fn_name, cache))
        patched.append(model)
    try:
        yield
    finally:
        for model in patched:
            for fn_name in names:
                vars(model).pop(fn_name, None)


def _cached(original: Callable, fn_name: str, cache: dict) -> Callable:
    @functools.wraps(original)
    def encode(inputs: Any, *args: Any, truncate_dim: int | None = None, **kwargs: Any) -> Any:
        kwargs.pop("show_progress_bar", None)
        key = (fn_name, _freeze(inputs), _freeze(args), _freeze(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(inputs, *args, show_progress_bar=False, **kwargs)
        out = cache[key]
        return out[..., :truncate_dim] if truncate_dim else out

    return encode


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return (value.shape, value.tobytes())
    return value


# --------------------------------------------------------------------------------------------
# building evaluators from rows


class _FixedEmbeddings:
    """Stands in for a teacher model when the target embeddings are already in the data."""

    def __init__(self, embeddings: np.ndarray):
        self.embeddings = embeddings

    def encode(self, inputs: Any, truncate_dim: int | None = None, **kwargs: Any) -> np.ndarray:
        return self.embeddings[..., :truncate_dim] if truncate_dim else self.embeddings


def columns_for(ds: Dataset, kind: str, where: str) -> dict[str, list]:
    """Pick the evaluator's inputs from ``ds``: by role name when present, else by position."""
    from .config import EVALUATOR_COLUMNS
    from .data import label_column, text_columns

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
                raise DataError(f"a {kind} evaluator needs columns {need}; the data has: {', '.join(ds.column_names)}", where=where)
            out[role] = list(ds[column])
    if kind == "mse" and label is not None:
        out["label"] = list(ds[label])
    return out


def build_spec(cfg: EvaluatorConfig, rows: Dataset, where: str, batch_size: int, teacher: Any = None) -> EvalSpec:
    """An :class:`EvalSpec` for one configured evaluator over its rows."""
    from sentence_transformers.sentence_transformer import evaluation as ste

    name = cfg.name or cfg.dataset or cfg.type
    bs = cfg.batch_size or batch_size
    cols = columns_for(rows, cfg.type, where)
    common = {"name": name, "batch_size": bs, "write_csv": False}

    if cfg.type == "triplet":
        def build(dim: int) -> Any:
            return ste.TripletEvaluator(cols["anchor"], cols["positive"], cols["negative"], truncate_dim=dim, **common)
    elif cfg.type == "sts":
        scores = np.asarray(cols["score"], dtype=float)
        if cfg.score_range is not None:
            low, high = cfg.score_range
            if high <= low:
                raise ConfigError("score_range must be [low, high] with low < high", where=f"{where}.score_range")
            scores = (scores - low) / (high - low)

        def build(dim: int) -> Any:
            return ste.EmbeddingSimilarityEvaluator(cols["sentence1"], cols["sentence2"], scores.tolist(), truncate_dim=dim, **common)
    elif cfg.type == "retrieval":
        queries, corpus, relevant = _retrieval_inputs(cols["query"], cols["document"])

        def build(dim: int) -> Any:
            return ste.InformationRetrievalEvaluator(queries, corpus, relevant, truncate_dim=dim, **common)
    else:  # mse
        if teacher is None and "label" not in cols:
            raise ConfigError("an mse evaluator needs a teacher model or a 'label' embedding column", where=where)
        sentences = cols["sentence"]
        if teacher is not None:  # encode once at full size; every dim slices it
            targets = _FixedEmbeddings(teacher.encode(sentences, batch_size=bs, convert_to_numpy=True))
        else:
            targets = _FixedEmbeddings(np.asarray(cols["label"], dtype=np.float32))

        def build(dim: int) -> Any:
            return ste.MSEEvaluator(sentences, sentences, teacher_model=targets, truncate_dim=dim, **common)

    return EvalSpec(name, cfg.type, build)


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


# --------------------------------------------------------------------------------------------
# presenting results


def primary_table(before: Results | None, after: Results | None, primary: dict[str, str], dims: list[int]) -> str:
    """The per-dim before/after table printed at the end of a run (one block per evaluator)."""
    lines = []
    for name, metric in primary.items():
        lines.append(f"{name} · {metric}")
        lines.append(f"  {'dim':>6}  {'before':>8}  {'after':>8}  {'change':>8}")
        for dim in dims:
            b = _get(before, name, dim, metric)
            a = _get(after, name, dim, metric)
            change = f"{a - b:+8.4f}" if a is not None and b is not None else f"{'':>8}"
            lines.append(f"  {dim:>6}  {_fmt(b)}  {_fmt(a)}  {change}")
    return "\n".join(lines)


def _get(results: Results | None, name: str, dim: int, metric: str) -> float | None:
    if not results:
        return None
    return results.get(name, {}).get(str(dim), {}).get(metric)


def _fmt(value: float | None) -> str:
    return f"{value:8.4f}" if value is not None else f"{'—':>8}"
