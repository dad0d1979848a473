"""Reading a config: YAML files (the one reader, also used for sweep files), ``extends:``,
``--set`` overrides, validation with every problem at once, and the resolved YAML."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, Problem
from .messages import schema_problems
from .schema import STAGE_KEYS, EvalConfig, RunConfig


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (following ``extends:``), apply ``--set`` overrides, validate.

    Raises :class:`ConfigError` listing every problem found, each with its YAML path.
    """
    raw = load_raw(path)
    for item in overrides or []:
        apply_override(raw, item)
    return validate(raw)


def load_raw(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found (looked in {path.resolve().parent})", where=str(path))
    if path.resolve() in _seen:
        raise ConfigError("'extends' forms a cycle", where=str(path))
    data = read_yaml(path)
    if data is None:
        raise ConfigError("the config file is empty", where=str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}", where=str(path))
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError("'extends' takes one file path", where=f"{path}: extends")
    base = load_raw((path.parent / parent), _seen + (path.resolve(),))
    return deep_merge(base, data)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) in ``top`` replaces ``base``."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override in place. List items are addressed by index (datasets.0.limit).

    The value stays a string unless it is YAML for a list, mapping or null; the schema then types
    it (``"3e-5"`` becomes a float for ``training.learning_rate``, stays a string for a path).
    """
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got '{item}'", where="--set")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set key '{key}' has an empty part", where="--set")
    value: Any = text
    if text.strip()[:1] in ("[", "{") or text.strip() in ("null", "~"):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"value of '{key}' is not valid YAML: {text}", where="--set") from None
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: i + 1]), create=True)
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    else:
        node[last] = value


def _child(node: Any, part: str, path: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"'{path}' is not a section", where="--set")
    if part not in node or node[part] is None:
        if not create:
            raise ConfigError(f"no key '{path}'", where="--set")
        node[part] = {}
    return node[part]


def _index(node: list, part: str, path: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"'{path}': list index '{part}' out of range (list has {len(node)} items)", where="--set")
    return int(part)


def validate(raw: dict[str, Any]) -> RunConfig:
    """Validate a raw config; a config with ``stages`` also has each stage, merged over the top
    level, validated as a whole config, its problems named ``stages.<i>.<path>``."""
    problems: list[Problem] = []
    config = None
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = schema_problems(exc, RunConfig)
    stages = raw.get("stages") if isinstance(raw, dict) else None
    if isinstance(stages, list):
        problems += _stage_problems(raw, stages, problems)
    if problems:
        raise ConfigError(problems)
    assert config is not None
    return config


def merge_stage(base: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    """The whole config a stage runs with: its sections merged over the top level (minus 'stages')."""
    top = {k: v for k, v in base.items() if k != "stages"}
    return deep_merge(top, {k: v for k, v in stage.items() if k in STAGE_KEYS and v is not None})


def _stage_problems(raw: dict[str, Any], stages: list, top_problems: list[Problem]) -> list[Problem]:
    """Problems of each merged stage that are not already reported for the top level."""
    seen = {(p.where, p.message) for p in top_problems}
    out = []
    for i, stage in enumerate(stages):
        prefix = f"stages.{i}"
        own = any(p.where == prefix or p.where.startswith(prefix + ".") for p in top_problems)
        if not isinstance(stage, dict) or own:
            continue  # its own shape is wrong; that is reported already
        try:
            RunConfig.model_validate(merge_stage(raw, stage))
        except ValidationError as exc:
            out += [
                Problem(f"{prefix}.{p.where}", p.message)
                for p in schema_problems(exc, RunConfig)
                if (p.where, p.message) not in seen
            ]
    return out


def load_eval_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig | EvalConfig:
    """Read the config of ``mtrain eval``: a run config (it has ``datasets``; its evaluation section
    is used) or an eval-only :class:`EvalConfig`."""
    raw = load_raw(path)
    for item in overrides or []:
        apply_override(raw, item)
    if "datasets" in raw:
        return validate(raw)
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(schema_problems(exc, EvalConfig)) from None


def dump_resolved(config: RunConfig) -> str:
    """The config with every default filled in, as YAML (written next to the trained model)."""
    data = config.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def read_yaml(path: Path) -> Any:
    """The parsed content of a YAML file; malformed YAML or bytes that are not UTF-8 are a
    :class:`ConfigError` naming the file, line and column."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML: {problem}", where=where) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 text (byte {exc.start})", where=str(path)) from None
