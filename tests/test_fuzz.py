"""Property-based tests: whatever the config and the rows, `mtrain check` ends with exit code 0 or 2
and a message; it never raises. Hypothesis mutates a valid config (junk values, deleted keys,
unknown keys) and writes random rows (nulls, numbers, lists, odd Unicode, raw bytes)."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matryoshka_train.cli import main
from matryoshka_train.config import validate
from matryoshka_train.errors import ConfigError
from matryoshka_train.training.prepare import config_problems

SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-10, max_value=10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-4, max_value=80), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)

# keys the schema knows but the base config does not set, so mutations reach them too
EXTRA_PATHS = [
    ("training", "extra", "fp16"), ("training", "extra", "warmup_steps"), ("training", "extra", "nonsense"),
    ("training", "dataloader_drop_last"), ("training", "precision"), ("training", "gradient_accumulation_steps"),
    ("matryoshka", "weights"), ("matryoshka", "wrapper"), ("matryoshka", "reduction"),
    ("loss", "kwargs", "mini_batch_size"), ("loss", "kwargs", "scale"), ("loss", "guide_model"), ("loss", "matryoshka"),
    ("datasets", 0, "score_range"), ("datasets", 0, "max_empty_ratio"), ("datasets", 0, "limit"),
    ("datasets", 0, "eval", "ratio"), ("datasets", 0, "source", "format"), ("datasets", 0, "source", "hub"),
    ("model", "pooling"), ("model", "max_seq_length"), ("model", "normalize"), ("model", "type"),
    ("evaluation", "dims"), ("evaluation", "evaluators", 0, "score_range"), ("evaluation", "evaluators", 0, "type"),
]


def base_config(model_dir: Path, data_file: Path, out: Path) -> dict[str, Any]:
    return {
        "model": {"name_or_path": str(model_dir)},
        "datasets": [{"name": "d", "source": {"path": str(data_file)}, "columns": ["anchor", "positive", "negative"],
                      "eval": {"count": 8}}],
        "loss": {"name": "mnrl"},
        "matryoshka": {"dims": [32, 16]},
        "training": {"output_dir": str(out), "max_steps": 2, "per_device_train_batch_size": 8},
        "evaluation": {"evaluators": [{"type": "triplet", "dataset": "d"}]},
        "carbon": {"enabled": False},
    }


def paths_of(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths_of(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths_of(v, prefix + (i,))
    return out


def mutate(config: dict, path: tuple, action: str, value: Any) -> None:
    """Set, delete, or add an unknown key next to ``path``; silently skip paths that no longer exist."""
    node: Any = config
    for part in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {}) if action == "set" else node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return
        if node is None:
            return
    last = path[-1]
    if isinstance(node, dict):
        if action == "set":
            node[last] = value
        elif action == "delete":
            node.pop(last, None)
        else:
            node[f"{last}_x"] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node) and action == "set":
        node[last] = value


mutations = st.lists(
    st.tuples(st.integers(min_value=0, max_value=10**6), st.sampled_from(["set", "delete", "unknown"]), junk),
    min_size=1,
    max_size=4,
)


def apply(config: dict, ops: list) -> dict:
    config = copy.deepcopy(config)
    paths = paths_of(config) + EXTRA_PATHS
    for index, action, value in ops:
        mutate(config, paths[index % len(paths)], action, value)
    return config


@settings(max_examples=300, **SETTINGS)
@given(ops=mutations)
def test_any_config_dict_validates_or_names_its_problems(ops, tiny_model_dir, data_dir, tmp_path):
    raw = apply(base_config(tiny_model_dir, data_dir / "triplets.jsonl", tmp_path / "out"), ops)
    try:
        config = validate(raw)
    except ConfigError as exc:
        assert exc.problems and all(p.where and p.message for p in exc.problems)
        assert all("\n" not in str(p) for p in exc.problems)
        return
    for problem in config_problems(config):
        assert problem.where and problem.message and "\n" not in str(problem)


text = st.one_of(st.text(max_size=30), st.sampled_from(["", "   ", "\u0000", "\ud7ff\ue000", "é" * 40, "river " * 60]))
odd_cell = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(min_value=-1, max_value=1), max_size=33),
    st.booleans(),
    text,
)
COLUMNS_FOR = {  # what each loss reads, so that many examples get past the column checks to the rows
    "mnrl": ["anchor", "positive", "negative"],
    "cached_mnrl": ["anchor", "positive"],
    "triplet": ["anchor", "positive", "negative"],
    "cosine": ["sentence1", "sentence2", "score"],
    "cosent": ["sentence1", "sentence2", "score"],
    "mse": ["sentence", "label"],
    "margin_mse": ["anchor", "positive", "negative", "label"],
}


@st.composite
def rows_for(draw: Any, loss: str) -> list[dict]:
    """Rows with the loss's columns, mostly well-typed values, some odd ones, sometimes an extra column."""
    keys = COLUMNS_FOR[loss] + draw(st.lists(st.sampled_from(["id", "score", "label", "anchor"]), max_size=1))
    good = {
        "score": st.floats(min_value=-2, max_value=6),
        "label": st.one_of(st.floats(min_value=-1, max_value=1), st.lists(st.floats(-1, 1), min_size=32, max_size=32)),
    }
    n = draw(st.one_of(st.integers(min_value=0, max_value=40), st.just(40)))
    out = []
    for _ in range(n):
        row = {}
        for k in keys:
            odd = draw(st.integers(0, 59)) == 0
            row[k] = draw(odd_cell if odd else good.get(k, st.text(min_size=1, max_size=30)))
        out.append(row)
    return out


dataset_options = st.fixed_dictionaries(
    {},
    optional={
        "columns": st.lists(
            st.sampled_from(["anchor", "positive", "negative", "score", "label", "sentence1", "sentence2"]),
            min_size=1,
            max_size=4,
            unique=True,
        ),
        "score_range": st.sampled_from([[0, 1], [0, 5], [-1, 1]]),
        "max_empty_ratio": st.sampled_from([0, 0.5, 1]),
        "eval": st.sampled_from([None, {"count": 2}, {"first": 1}, {"ratio": 0.5}]),
    },
)
losses = st.sampled_from(["mnrl", "cached_mnrl", "cosine", "cosent", "mse", "triplet", "margin_mse"])


@settings(max_examples=150, **SETTINGS)
@given(
    data=st.data(),
    raw_bytes=st.one_of(st.none(), st.none(), st.none(), st.binary(max_size=200)),
    options=dataset_options,
    loss=losses,
    batch=st.integers(min_value=1, max_value=16),
    drop_last=st.booleans(),
    ops=st.one_of(st.just([]), st.just([]), mutations),
    suffix=st.sampled_from([".jsonl", ".jsonl", ".csv"]),
)
def test_check_never_raises_on_any_rows(data, raw_bytes, options, loss, batch, drop_last, ops, suffix, tiny_model_dir):
    data_rows = data.draw(rows_for(loss))
    if options.get("columns") is not None and data.draw(st.booleans()):
        options = dict(options, columns=None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_file = tmp / f"rows{suffix}"
        if raw_bytes is not None:
            data_file.write_bytes(raw_bytes)
        elif suffix == ".csv":
            keys = sorted({k for r in data_rows for k in r})
            lines = [",".join(keys)] + [
                ",".join(json.dumps(r.get(k), ensure_ascii=False) for k in keys) for r in data_rows
            ]
            data_file.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        else:
            data_file.write_text(
                "".join(json.dumps(r) + "\n" for r in data_rows), encoding="utf-8", errors="surrogatepass"
            )
        config = base_config(tiny_model_dir, data_file, tmp / "out")
        config["datasets"][0].update(options)
        if "columns" not in options:
            config["datasets"][0]["columns"] = None  # use the file's columns as they are
        config["loss"] = {"name": loss, **({"kwargs": {"mini_batch_size": 4}} if loss == "cached_mnrl" else {})}
        config["training"].update(per_device_train_batch_size=batch, dataloader_drop_last=drop_last)
        config["evaluation"] = {"evaluators": []}
        config = apply(config, ops)
        path = tmp / "config.yaml"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        assert main(["check", str(path)]) in (0, 2)
