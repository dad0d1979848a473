"""Retrieval evaluation from BEIR-layout directories and NanoBEIR.

A BEIR directory holds three things (the layout the BEIR benchmark ships its datasets in)::

    corpus.jsonl        {"_id": "d1", "title": "…", "text": "…"} per line
    queries.jsonl       {"_id": "q1", "text": "…"} per line
    qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score, with a header line

:func:`read_beir` turns it into the three dicts sentence-transformers'
``InformationRetrievalEvaluator`` takes; judgements with score ≤ 0 are not relevant. The evaluator
then reports nDCG@10, MRR@10, MAP@100, accuracy@k, precision@k and recall@k at every dim.

``type: nanobeir`` uses sentence-transformers' ``NanoBEIREvaluator``, which downloads small BEIR
subsets from the hub by name; offline, ``mtrain check`` reports it as not verified.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentence_transformers.sentence_transformer import evaluation as ste
from sentence_transformers.sentence_transformer.evaluation import nano_beir

from ..errors import ConfigError, DataError
from .evaluators import EvalSpec

if TYPE_CHECKING:  # pragma: no cover
    from ..config.schema import EvaluatorConfig

AT_K = {"mrr_at_k": [10], "ndcg_at_k": [10], "accuracy_at_k": [1, 10], "precision_recall_at_k": [1, 10, 100]}


@dataclass
class BeirData:
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]
    skipped: int = 0  # judgements naming a query or document that is not in the files


def read_beir(directory: str | Path, split: str, where: str, limit: int | None = None) -> BeirData:
    """Read a BEIR-layout directory; every problem is a DataError naming the file (and line)."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"BEIR directory not found: {root} (relative paths start at {Path.cwd()})", where=where)
    qrels_file = root / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        hint = f"; splits here: {', '.join(have)}" if have else "; expected qrels/<split>.tsv"
        raise DataError(f"no judgements file {qrels_file}{hint}", where=where)
    corpus = {doc_id: _join(row.get("title"), row.get("text")) for doc_id, row in _jsonl(root / "corpus.jsonl", where)}
    queries = {qid: str(row.get("text") or "") for qid, row in _jsonl(root / "queries.jsonl", where)}

    relevant: dict[str, set[str]] = {}
    skipped = 0
    with qrels_file.open(encoding="utf-8", newline="") as f:
        for line_no, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not row or (line_no == 1 and not _is_number(row[-1])):
                continue  # blank line or the header
            if len(row) < 3 or not _is_number(row[2]):
                raise DataError(f"{qrels_file}:{line_no}: expected query-id, "
                                "corpus-id, score separated by tabs", where=where)
            qid, did, score = row[0], row[1], float(row[2])
            if score <= 0:
                continue
            if qid not in queries or did not in corpus:
                skipped += 1
                continue
            relevant.setdefault(qid, set()).add(did)
    if not relevant:
        raise DataError(f"{qrels_file} has no positive judgement for a query and document in the files", where=where)
    if limit is not None:
        relevant = dict(list(relevant.items())[:limit])
    return BeirData({q: queries[q] for q in relevant}, corpus, relevant, skipped)


def _jsonl(path: Path, where: str) -> list[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"missing {path.name} in the BEIR directory {path.parent}", where=where)
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})", where=where) from None
            if not isinstance(row, dict) or "_id" not in row:
                raise DataError(f"{path}:{line_no}: each line needs an '_id' and 'text'", where=where)
            rows.append((str(row["_id"]), row))
    if not rows:
        raise DataError(f"{path} holds no rows", where=where)
    return rows


def _join(title: Any, text: Any) -> str:
    return " ".join(str(part).strip() for part in (title, text) if part and str(part).strip())


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def nanobeir_names() -> list[str]:
    """The NanoBEIR set names sentence-transformers knows (no network needed)."""
    return list(nano_beir.DATASET_NAME_TO_HUMAN_READABLE)


def nanobeir_name_problem(cfg: EvaluatorConfig) -> str | None:
    known = nanobeir_names()
    unknown = [n for n in cfg.datasets or [] if n.lower() not in known]
    if unknown:
        return f"unknown NanoBEIR set(s) {', '.join(unknown)}; known: {', '.join(known)}"
    return None


def retrieval_spec(cfg: EvaluatorConfig, where: str, batch_size: int, data: BeirData | None = None) -> EvalSpec:
    """An EvalSpec for ``retrieval`` with ``beir:`` (over ``data`` when already read), or for ``nanobeir``."""
    name = cfg.display_name()
    common = {"batch_size": cfg.batch_size or batch_size, "write_csv": False}
    if cfg.type == "nanobeir":
        problem = nanobeir_name_problem(cfg)
        if problem:
            raise ConfigError(problem, where=f"{where}.datasets")
        names = [n.lower() for n in cfg.datasets] if cfg.datasets else None

        def build(dim: int) -> Any:
            try:
                return ste.NanoBEIREvaluator(dataset_names=names, truncate_dim=dim, **common)
            except Exception as exc:  # noqa: BLE001 - the datasets/hub libraries raise many types when offline
                raise DataError("cannot load NanoBEIR from the hub "
                                f"({str(exc).splitlines()[0]}); it needs network access", where=where) from None

        return EvalSpec(name, "nanobeir", build)

    if data is None:
        data = read_beir(cfg.beir, cfg.split, f"{where}.beir", cfg.limit)

    def build(dim: int) -> Any:
        return ste.InformationRetrievalEvaluator(
            data.queries, data.corpus, data.relevant, name=name, truncate_dim=dim, **AT_K, **common
        )

    return EvalSpec(name, "retrieval", build)
