"""Per-dimension evaluation.

:class:`MatryoshkaEvaluator` runs every configured sentence-transformers evaluator (triplet,
STS, retrieval, MSE, NanoBEIR) at every Matryoshka dim. The evaluators themselves are
sentence-transformers' own; what we add is

1. one evaluator instance per dim with ``truncate_dim`` set;
2. encoding each list of texts once per call at full size and slicing it for every dim (otherwise
   a 9-dim run encodes the eval set nine times);
3. results nested as ``{evaluator: {dim: {metric: value}}}``;
4. a dim × precision grid: the same evaluators again on int8 and binary embeddings, made from the
   cached float32 ones (see :func:`quantize`), each cell with its bytes per vector;
5. aggregates over dims (``<evaluator>_dimmean_<metric>``, ``_dimmin_``, ``_dimweighted_``), so that
   ``metric_for_best_model`` can keep the checkpoint that is best across *all* sizes;
6. one progress bar per evaluation over its (evaluator, dim, precision) cells, instead of
   sentence-transformers' bar per encode call (which the shared encodings switch off). The first
   cell of each evaluator does the encoding, so it takes longest.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
from sentence_transformers.util import quantize_embeddings

from ..errors import ConfigError
from ..reporting import progress
from ..reporting.results import split_per_dim_key

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

Results = dict[str, dict[str, dict[str, float]]]  # evaluator -> str(dim) -> metric -> value

EVAL_BAR = "Per-dim evaluation"  # the progress bar's description (one bar per evaluation, over its cells)


# --------------------------------------------------------------------------------------------
# the evaluator the trainer calls


@dataclass
class EvalSpec:
    """One configured evaluator: its name, type and a factory building the ST evaluator for a dim."""

    name: str
    type: str
    build: Callable[[int], Any]


class MatryoshkaEvaluator(BaseEvaluator):
    """Callable like any sentence-transformers evaluator; returns flat metrics (the trainer
    prefixes ``eval_``):

    * ``<evaluator>_dim<d>_<metric>``: float32 embeddings cut to ``d``;
    * ``<evaluator>_<precision>_dim<d>_<metric>``: the same at int8 / binary (when configured);
    * ``<evaluator>_dimmean_<metric>``, ``<evaluator>_dimmin_<metric>`` and, with ``dim_weights``,
      ``<evaluator>_dimweighted_<metric>``: float32 results aggregated over the dims.

    The nested forms are kept in :attr:`last_results` (float32, ``{evaluator: {dim: {metric}}}``),
    :attr:`last_grid` (``{evaluator: {precision: {dim: {metric, "bytes"}}}}``) and
    :attr:`last_aggregates` (``{evaluator: {"dimmean"|"dimmin"|"dimweighted": {metric}}}``).
    :attr:`primary_metric` is the first evaluator's main metric at the full dim, which the trainer
    uses for ``load_best_model_at_end`` unless ``metric_for_best_model`` says otherwise.

    Args:
        specs: One :class:`EvalSpec` per evaluator (its name, type, and a factory building the
            sentence-transformers evaluator for one dim).
        dims: The dims to evaluate at, largest first.
        precisions: ``"float32"`` (always evaluated) plus any of ``"int8"``, ``"binary"``.
        dim_weights: One weight per dim for the ``dimweighted`` aggregate (optional).

    Example:
        ::

            from sentence_transformers.sentence_transformer.evaluation import TripletEvaluator

            from matryoshka_train.evaluation import EvalSpec, MatryoshkaEvaluator

            def build(dim):
                return TripletEvaluator(anchors, positives, negatives, name="dev", truncate_dim=dim)

            evaluator = MatryoshkaEvaluator([EvalSpec("dev", "triplet", build)], dims=[384, 128, 32])
            metrics = evaluator(model)  # {"dev_dim384_cosine_accuracy": ..., "dev_dimmin_cosine_accuracy": ...}
    """

    def __init__(
        self,
        specs: list[EvalSpec],
        dims: list[int],
        precisions: list[str] | tuple[str, ...] = ("float32",),
        dim_weights: list[float] | None = None,
    ):
        super().__init__()
        self.specs = specs
        self.dims = list(dims)
        self.precisions = ["float32"] + [p for p in precisions if p != "float32"]
        if dim_weights is not None and len(dim_weights) != len(self.dims):
            raise ConfigError(
                f"{len(dim_weights)} weights for {len(self.dims)} evaluated dims {self.dims}: give one per dim",
                where="evaluation.dim_weights",
            )
        self.dim_weights = list(dim_weights) if dim_weights is not None else None
        self.types = {s.name: s.type for s in specs}
        self.evaluators = {(s.name, d): s.build(d) for s in specs for d in self.dims}
        self.primary: dict[str, str] = {}
        self.last_results: Results = {}
        self.last_grid: Grid = {}
        self.last_aggregates: dict[str, dict[str, dict[str, float]]] = {}
        self.primary_metric = ""

    def __call__(
        self, model: SentenceTransformer, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        results: Results = {}
        grid: Grid = {}
        flat: dict[str, float] = {}
        cells = [(precision, name, dim, evaluator) for precision in self.precisions
                 for (name, dim), evaluator in self.evaluators.items()
                 # MSE targets are float32 vectors: a quantized distance to them means nothing
                 if precision == "float32" or self.types[name] != "mse"]
        # one bar over every (evaluator, dim, precision) cell; it disappears when the evaluation ends
        with shared_encodings(model) as caches, progress.bar(len(cells), EVAL_BAR, unit=" evals", leave=False) as bar:
            for precision, name, dim, evaluator in cells:
                for cache in caches:
                    cache.precision = precision
                bar.set_postfix_str(f"{name} dim {dim}" + ("" if precision == "float32" else f" {precision}"),
                                    refresh=False)
                clean = self._run(name, evaluator, model)
                bar.update()
                cell = grid.setdefault(name, {}).setdefault(precision, {})
                cell[str(dim)] = {**clean, "bytes": bytes_per_vector(dim, precision)}
                if precision == "float32":
                    results.setdefault(name, {})[str(dim)] = clean
                    flat.update({f"{name}_dim{dim}_{m}": v for m, v in clean.items()})
                else:
                    flat.update({f"{name}_{precision}_dim{dim}_{m}": v for m, v in clean.items()})
        self.last_results = results
        self.last_grid = grid
        self.last_aggregates = aggregate_over_dims(results, self.dim_weights)
        for name, kinds in self.last_aggregates.items():
            for kind, metrics in kinds.items():
                flat.update({f"{name}_{kind}_{m}": v for m, v in metrics.items()})
        first = self.specs[0].name
        self.primary_metric = f"{first}_dim{self.dims[0]}_{self.primary[first]}"
        return flat

    def _run(self, name: str, evaluator: Any, model: Any) -> dict[str, float]:
        metrics = evaluator(model)
        prefix = f"{evaluator.name}_" if getattr(evaluator, "name", "") else ""
        clean = {k.removeprefix(prefix): float(v) for k, v in metrics.items()}
        primary = evaluator.primary_metric or ""
        self.primary[name] = primary.removeprefix(prefix)
        return clean

    @property
    def description(self) -> str:
        return "Matryoshka per-dimension evaluation"

    def get_config_dict(self) -> dict[str, Any]:
        return {"dims": self.dims, "evaluators": [s.name for s in self.specs], "precisions": self.precisions}


Grid = dict[str, dict[str, dict[str, dict[str, float]]]]  # evaluator -> precision -> str(dim) -> metric -> value


def bytes_per_vector(dim: int, precision: str) -> int:
    """Storage of one embedding: float32 4·dim, int8 dim, binary dim/8 (bits packed, rounded up)."""
    if precision == "binary":
        return math.ceil(dim / 8)
    return dim * (4 if precision == "float32" else 1)


def aggregate_over_dims(results: Results, weights: list[float] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, minimum and (with ``weights``, one per dim in result order) weighted mean of every
    metric over the dims. All sentence-transformers metrics here grow with quality (MSE is
    reported negated), so "min" is the worst size."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, per_dim in results.items():
        rows = list(per_dim.values())
        if not rows:
            continue
        metrics = [m for m in rows[0] if all(m in r for r in rows)]
        kinds: dict[str, dict[str, float]] = {"dimmean": {}, "dimmin": {}}
        if weights is not None:
            kinds["dimweighted"] = {}
        for m in metrics:
            values = [r[m] for r in rows]
            kinds["dimmean"][m] = float(np.mean(values))
            kinds["dimmin"][m] = float(min(values))
            if weights is not None:
                kinds["dimweighted"][m] = float(np.dot(weights, values) / sum(weights))
        out[name] = kinds
    return out


METRIC_KEY = re.compile(
    r"^(?:eval_)?(?P<name>.+?)_(?:(?P<precision>int8|binary)_)?(?P<which>dim\d+|dimmean|dimmin|dimweighted)_(?P<metric>.+)$"
)


def metric_name_problem(metric: str, names: list[str], dims: list[int] | None, weighted: bool) -> str | None:
    """Why ``training.metric_for_best_model`` cannot name one of our metric keys (None when it can).
    The metric part itself is checked when the evaluators run; here: evaluator, dim, aggregate."""
    if metric in ("loss", "eval_loss"):
        return None
    bare = metric.removeprefix("eval_")
    name = next((n for n in sorted(names, key=len, reverse=True) if bare.startswith(n + "_")), None)
    match = METRIC_KEY.match(f"{name}_{bare[len(name) + 1 :]}") if name else None
    examples = ", ".join(f"{n}_dimmin_<metric>" for n in names[:2]) or "<evaluator>_dimmin_<metric>"
    if name is None or match is None:
        return (
            f"'{metric}' is not a metric of this run: use <evaluator>_dim<d>_<metric>, <evaluator>_dimmean_<metric>, "
            f"<evaluator>_dimmin_<metric> (e.g. {examples}); evaluators: {', '.join(names) or 'none configured'}"
        )
    which = match.group("which")
    if which == "dimweighted" and not weighted:
        return f"'{metric}' needs evaluation.dim_weights (one weight per evaluated dim)"
    if which.startswith("dim") and which[3:].isdigit() and dims is not None and int(which[3:]) not in dims:
        return f"'{metric}': dim {which[3:]} is not evaluated; evaluated dims: {dims}"
    return None


# The metric names sentence-transformers' evaluators return, by our evaluator type (the similarity
# part follows the model's similarity function). Types not listed are not checked by name.
METRIC_NAMES: dict[str, tuple[re.Pattern[str], str]] = {
    "triplet": (re.compile(r"^(cosine|dot|euclidean|manhattan|max)_accuracy$"), "cosine_accuracy"),
    "sts": (re.compile(r"^(pearson|spearman)_(cosine|dot|euclidean|manhattan|max)$"), "spearman_cosine"),
    "mse": (re.compile(r"^negative_mse$"), "negative_mse"),
}


def reference_key_problem(key: str, types: dict[str, str], dims: list[int] | None) -> str | None:
    """Why an ``evaluation.reference`` key names no metric this config's evaluators produce (None
    when it can). ``types``: evaluator name -> type; ``dims``: the evaluated dims, when known."""
    names = list(types)
    parts = split_per_dim_key(key, names)
    if parts is None:
        example = f"{names[0]}_dim{(dims or [768])[0]}_<metric>" if names else "<evaluator>_dim<d>_<metric>"
        return (
            f"'{key}' is not a per-dim metric of any evaluator of this config: use "
            f"<evaluator>_dim<d>_<metric> (e.g. {example}); evaluators: {', '.join(names) or 'none configured'}"
        )
    name, dim, metric = parts
    if dims is not None and dim not in dims:
        return f"'{key}': dim {dim} is not evaluated; evaluated dims: {dims}"
    known = METRIC_NAMES.get(types[name])
    if known is not None and not known[0].match(metric):
        return (f"'{key}': a {types[name]} evaluator has no metric '{metric}'; its metrics are named like "
                f"{known[1]} (e.g. {name}_dim{dim}_{known[1]})")
    return None


# --------------------------------------------------------------------------------------------
# encode once, slice per dim


class EncodingCache:
    """One model's encodings during a :func:`shared_encodings` block, and the precision served.

    ``precision`` "float32" serves the slice as computed; "int8" and "binary" serve it quantized
    and cast back to float32, so every sentence-transformers evaluator scores the quantized vectors
    with its usual similarity: int8 codes (scaled per column from the min/max over every text
    encoded in this block: the whole evaluation set) and ±1 for binary, whose dot product ranks
    exactly as Hamming distance does.
    """

    def __init__(self) -> None:
        self.entries: dict[Any, Any] = {}
        self.precision = "float32"
        self._ranges: np.ndarray | None = None
        self._ranges_from = -1

    def serve(self, out: Any, truncate_dim: int | None) -> Any:
        sliced = out[..., :truncate_dim] if truncate_dim else out
        if self.precision == "float32":
            return sliced
        return quantize(sliced, self.precision, self.ranges()[:, : sliced.shape[-1]])

    def ranges(self) -> np.ndarray:
        """Per-column [min, max] over every cached full-size embedding (for int8)."""
        if self._ranges is None or self._ranges_from != len(self.entries):
            stacked = np.concatenate([_as_numpy(v).reshape(-1, _as_numpy(v).shape[-1]) for v in self.entries.values()])
            self._ranges = np.stack([stacked.min(axis=0), stacked.max(axis=0)])
            self._ranges_from = len(self.entries)
        return self._ranges


def quantize(embeddings: Any, precision: str, ranges: np.ndarray) -> Any:
    """int8 or binary copies of float embeddings, as float32 in the input's container type."""
    array = _as_numpy(embeddings)
    if precision == "binary":
        out = np.where(array > 0, 1.0, -1.0).astype(np.float32)
    else:
        out = (
            quantize_embeddings(array.reshape(-1, array.shape[-1]), "int8", ranges=ranges)
            .astype(np.float32)
            .reshape(array.shape)
        )
    if _is_tensor(embeddings):
        return torch.from_numpy(out).to(embeddings.device)
    return out


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch")


def _as_numpy(value: Any) -> np.ndarray:
    if _is_tensor(value):
        return value.detach().float().cpu().numpy()
    if isinstance(value, list):  # a list of per-text tensors (convert_to_tensor=False)
        return np.stack([_as_numpy(v) for v in value])
    return np.asarray(value, dtype=np.float32)


@contextlib.contextmanager
def shared_encodings(*models: Any) -> Iterator[list[EncodingCache]]:
    """Inside the block each model encodes a given list of texts once, at full size, and any
    ``truncate_dim`` is served by slicing that result (quantized when the yielded caches' precision
    says so). The model is restored on exit."""
    names = ("encode", "encode_query", "encode_document")
    patched = []
    caches = []
    for model in models:
        if model is None or "encode" in vars(model):
            continue
        cache = EncodingCache()
        for fn_name in names:
            setattr(model, fn_name, _cached(getattr(model, fn_name), fn_name, cache))
        patched.append(model)
        caches.append(cache)
    try:
        yield caches
    finally:
        for model in patched:
            for fn_name in names:
                vars(model).pop(fn_name, None)


def _cached(original: Callable, fn_name: str, cache: EncodingCache) -> Callable:
    @functools.wraps(original)
    def encode(inputs: Any, *args: Any, truncate_dim: int | None = None, **kwargs: Any) -> Any:
        kwargs.pop("show_progress_bar", None)
        key = (fn_name, _freeze(inputs), _freeze(args), _freeze(sorted(kwargs.items())))
        if key not in cache.entries:
            cache.entries[key] = original(inputs, *args, show_progress_bar=False, **kwargs)
        return cache.serve(cache.entries[key], truncate_dim)

    return encode


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return (value.shape, value.tobytes())
    return value
