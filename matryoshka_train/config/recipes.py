"""The shipped recipes (``configs/*.yaml``) for ``mtrain init``, and the config's JSON Schema for
``mtrain schema`` (editors validate and complete a YAML against it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .schema import RunConfig

RECIPES_DIR = Path(__file__).resolve().parents[2] / "configs"
# the first line of every shipped run config: editors with the YAML language server validate against it
SCHEMA_COMMENT = "# yaml-language-server: $schema=../docs/config.schema.json"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


def init_recipe(name: str, dest: str | None = None) -> Path:
    """Copy the recipe ``configs/NAME.yaml`` to DEST (default ``NAME.yaml`` here; a directory gets
    ``NAME.yaml`` inside it); never overwrites."""
    names = recipe_names()
    if name.endswith((".yaml", ".yml")):
        name = name.rsplit(".", 1)[0]
    if name not in names:
        listed = ", ".join(names) if names else f"none found in {RECIPES_DIR}"
        raise ConfigError(f"unknown recipe '{name}'; the recipes are: {listed}", where="init")
    target = Path(dest) if dest else Path(f"{name}.yaml")
    if target.is_dir():
        target = target / f"{name}.yaml"
    if target.exists():
        raise ConfigError(f"{target} already exists; give another destination or remove it first", where="init")
    if not target.parent.is_dir():
        raise ConfigError(f"directory {target.parent} does not exist", where="init")
    text = (RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    with open(target, "x", encoding="utf-8") as handle:  # "x": refuses a file that appeared meanwhile
        handle.write(text)
    return target


# fields whose validators also accept a shorthand (pydantic's schema shows only the full form)
SHORTHANDS: dict[tuple[str, str], dict[str, Any]] = {
    ("SourceConfig", "path"): {"type": "string"},
    ("DatasetConfig", "columns"): {"type": "array", "items": {"type": "string"}},
    ("EvaluatorConfig", "columns"): {"type": "array", "items": {"type": "string"}},
    ("TrainingConfig", "report_to"): {"type": "string"},
    ("DistillConfig", "teacher"): {"type": "string"},
}
_ANNOTATIONS = ("title", "description", "default")


def json_schema() -> dict[str, Any]:
    """The run config's JSON Schema (pydantic's, with the shorthands the validators take), plus the
    loader's own top-level key ``extends``."""
    schema = RunConfig.model_json_schema()
    for (model, name), shorthand in SHORTHANDS.items():
        props = schema["$defs"][model]["properties"]
        prop = props[name]
        forms = prop["anyOf"] if "anyOf" in prop else [{k: v for k, v in prop.items() if k not in _ANNOTATIONS}]
        props[name] = {"anyOf": [*forms, shorthand], **{k: v for k, v in prop.items() if k in _ANNOTATIONS}}
    schema["properties"] = {
        "extends": {
            "type": "string",
            "title": "Extends",
            "description": "Another YAML file this one is merged over (a path relative to this file).",
        },
        **schema["properties"],
    }
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
