"""What `mtrain check` accepts, `mtrain run` starts: a differential property test.

Hypothesis builds configs and the files they read (training rows, STS/triplet/MSE evaluator files,
anchor models), some broken on purpose: text where scores belong, missing columns, empty files,
nulls, model paths that do not exist, batches too small, Matryoshka wrapper arguments the loss
refuses. For each, `check` and a one-step `run` are called in-process and must agree: check exit 0
means run exits 0; check exit 2 means run exits 2 with the same first problem. Neither may end in
a traceback. Hub sources are left out: offline, check reports them as "not verified" by design.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matryoshka_train.cli import main

WORDS = ["river", "stone", "cloud", "lamp", "field", "glass", "bread", "storm", "wheel", "ember"]


def _text(i: int, j: int) -> str:
    return f"{WORDS[i % len(WORDS)]} {WORDS[(i * 3 + j) % len(WORDS)]} {i} {j}"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# valid data more often than not, so that both the accepted and the refused side are exercised
TRAIN_KINDS = ["triplets"] * 5 + ["pairs", "triplets_with_nulls", "numbers_in_text", "missing_column", "empty",
                                   "pairs_text_scores"]
EVAL_KINDS = [None, "triplet_dataset", "triplet_dataset", "sts_ok", "sts_ok", "sts_text_scores", "sts_missing_score",
              "sts_empty", "mse_labels", "mse_nothing", "triplet_file_two_columns", "sts_limit_text_after"]
ANCHORS = [None, None, None, "copy", "tiny", "missing_dir"]

any_case = st.fixed_dictionaries({
    "train": st.sampled_from(TRAIN_KINDS),
    "rows": st.sampled_from([24, 24, 6]),
    "evaluator": st.sampled_from(EVAL_KINDS),
    "anchor": st.sampled_from(ANCHORS),
    "batch": st.sampled_from([8, 8, 4, 1]),
    "drop_last": st.sampled_from([False, False, True]),
    "dims": st.sampled_from([[32, 16], [32, 16], [16], [64, 32]]),
    "wrapper_kwargs": st.sampled_from([{}, {}, {}, {"no_such_argument": 1}]),
})
# configs with nothing wrong on purpose, so that "check accepts -> run starts" is exercised often
valid_case = st.fixed_dictionaries({
    "train": st.sampled_from(["triplets", "pairs"]),
    "rows": st.just(24),
    "evaluator": st.sampled_from([None, "triplet_dataset", "sts_ok", "mse_labels", "sts_limit_text_after"]),
    "anchor": st.sampled_from([None, "copy", "tiny"]),
    "batch": st.sampled_from([8, 4]),
    "drop_last": st.booleans(),
    "dims": st.sampled_from([[32, 16], [16]]),
    "wrapper_kwargs": st.just({}),
})
cases = st.one_of(valid_case, any_case)


def _train_file(d: Path, kind: str, n: int) -> tuple[Path, list[str] | None, str]:
    """(file, columns, loss) for a training dataset of the given kind."""
    rows = [{"anchor": _text(i, 0), "positive": _text(i, 1), "negative": _text(i, 2)} for i in range(n)]
    if kind == "triplets_with_nulls":
        rows[1]["positive"] = None
    elif kind == "numbers_in_text":
        rows[2]["anchor"] = 17
    elif kind == "missing_column":
        rows = [{"anchor": r["anchor"], "positive": r["positive"]} for r in rows]
    elif kind == "empty":
        (d / "train.jsonl").write_text("", encoding="utf-8")
        return d / "train.jsonl", ["anchor", "positive", "negative"], "mnrl"
    elif kind in ("pairs", "pairs_text_scores"):
        pairs = [{"sentence1": _text(i, 0), "sentence2": _text(i, 1), "score": (i % 5) / 5} for i in range(n)]
        if kind == "pairs_text_scores":
            pairs[3]["score"] = "high"
        return _jsonl(d / "train.jsonl", pairs), ["sentence1", "sentence2", "score"], "CoSENTLoss"
    return _jsonl(d / "train.jsonl", rows), ["anchor", "positive", "negative"], "mnrl"


def _evaluator(d: Path, kind: str | None) -> dict[str, Any] | None:
    if kind is None:
        return None
    if kind == "triplet_dataset":
        return {"type": "triplet", "dataset": "d"}
    if kind.startswith("sts"):
        rows = [{"sentence1": _text(i, 3), "sentence2": _text(i, 4), "score": i / 10} for i in range(10)]
        if kind == "sts_text_scores":
            rows[4]["score"] = "very similar"
        elif kind == "sts_missing_score":
            rows = [{"sentence1": r["sentence1"], "sentence2": r["sentence2"]} for r in rows]
        elif kind == "sts_limit_text_after":
            rows[8]["score"] = "n/a"  # beyond limit: never read
            path = _jsonl(d / "sts.jsonl", rows)
            return {"type": "sts", "source": {"path": str(path)}, "limit": 5}
        elif kind == "sts_empty":
            (d / "sts.jsonl").write_text("", encoding="utf-8")
            return {"type": "sts", "source": {"path": str(d / "sts.jsonl")}}
        return {"type": "sts", "source": {"path": str(_jsonl(d / "sts.jsonl", rows))}}
    if kind == "mse_labels":
        rows = [{"sentence": _text(i, 5), "label": [0.01 * k for k in range(32)]} for i in range(6)]
        return {"type": "mse", "source": {"path": str(_jsonl(d / "mse.jsonl", rows))}}
    if kind == "mse_nothing":
        rows = [{"sentence": _text(i, 5)} for i in range(6)]
        return {"type": "mse", "source": {"path": str(_jsonl(d / "mse.jsonl", rows))}}
    rows = [{"a": _text(i, 6), "b": _text(i, 7)} for i in range(6)]  # a triplet evaluator needs three columns
    return {"type": "triplet", "source": {"path": str(_jsonl(d / "trip.jsonl", rows))}}


def _config(d: Path, case: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    path, columns, loss = _train_file(d, case["train"], case["rows"])
    config: dict[str, Any] = {
        "model": {"name_or_path": str(model_dir)},
        "datasets": [{"name": "d", "source": {"path": str(path)}, "columns": columns, "eval": {"count": 2}}],
        "loss": {"name": loss},
        "matryoshka": {"dims": case["dims"], "wrapper_kwargs": case["wrapper_kwargs"]},
        "training": {"output_dir": str(d / "out"), "max_steps": 1, "per_device_train_batch_size": case["batch"],
                     "dataloader_drop_last": case["drop_last"], "logging_steps": 1, "warmup_ratio": 0.0},
        "evaluation": {"evaluators": [], "before": False},
        "carbon": {"enabled": False},
    }
    evaluator = _evaluator(d, case["evaluator"])
    if evaluator is not None:
        config["evaluation"]["evaluators"] = [evaluator]
    if case["anchor"] is not None:
        model = {"copy": None, "tiny": str(model_dir), "missing_dir": str(d / "no-such-model")}[case["anchor"]]
        config["anchor"] = {"weight": 0.1, "model": model}
    return config


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@settings(max_examples=16, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=cases)
def test_what_check_accepts_run_starts(case, tiny_model_dir, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        path = d / "config.yaml"
        path.write_text(yaml.safe_dump(_config(d, case, tiny_model_dir)), encoding="utf-8")
        capsys.readouterr()
        checked = main(["check", str(path)])
        check_err = capsys.readouterr().err
        ran = main(["run", str(path)])
        run_err = capsys.readouterr().err
    assert "Traceback" not in check_err + run_err, (case, check_err, run_err)
    assert checked in (0, 2) and ran in (0, 2), (case, checked, ran, check_err, run_err)
    assert ran == checked, (case, check_err, run_err)
    if checked == 2:
        assert _errors(run_err)[:1] == _errors(check_err)[:1], (case, check_err, run_err)
