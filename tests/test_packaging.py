"""pyproject.toml declares what the package imports, with upper bounds on the libraries whose
internals we use, and extras that compose."""

from __future__ import annotations

import ast
import importlib.metadata
import sys

import pytest
from conftest import REPO
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "yaml": "pyyaml", "sentence_transformers": "sentence-transformers", "huggingface_hub": "huggingface-hub",
}
# imported only by optional features: the extra that must declare them
OPTIONAL = {
    "matplotlib": "report", "optuna": "sweep", "sqlalchemy": "sweep",
    "mteb": "mteb", "peft": "peft", "safetensors": "peft",
}
BOUNDED = {"sentence-transformers": "7", "transformers": "6", "datasets": "6", "accelerate": "2"}


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


def _third_party_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (REPO / "matryoshka_train").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "matryoshka_train":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_declared():
    required = {_name(r) for r in PROJECT["dependencies"]}
    extras = {extra: {_name(r) for r in reqs} for extra, reqs in PROJECT["optional-dependencies"].items()}
    imports = _third_party_imports()
    assert {"torch", "numpy", "pyarrow", "huggingface_hub", "yaml"} <= set(imports)
    missing = []
    for module, files in sorted(imports.items()):
        dist = DISTRIBUTIONS.get(module, module).lower()
        if module in OPTIONAL:
            ok = dist in extras[OPTIONAL[module]]
        else:
            ok = dist in required
        if not ok:
            missing.append(f"{module} (imported in {', '.join(sorted(files))})")
    assert not missing, "declare these in pyproject.toml: " + "; ".join(missing)


def test_upper_bounds_hold_the_installed_versions():
    requirements = {_name(r): Requirement(r) for r in PROJECT["dependencies"]}
    for dist, major in BOUNDED.items():
        spec = requirements[dist].specifier
        assert f"<{major}" in {str(s) for s in spec}, f"{dist} needs an upper bound <{major}"
        assert spec.contains(importlib.metadata.version(dist), prereleases=True), dist


def test_extras_compose():
    extras = PROJECT["optional-dependencies"]
    test = [Requirement(r) for r in extras["test"]]
    own = [r for r in test if r.name == "matryoshka-train"]
    wanted = {"quickstart", "report", "sweep", "postgres", "tensorboard", "mteb", "peft"}
    assert len(own) == 1 and wanted <= own[0].extras
    postgres = [Requirement(r) for r in extras["postgres"]]  # a PostgreSQL driver, with what a sweep needs
    assert {r.name for r in postgres} == {"matryoshka-train", "psycopg"}
    assert {"sweep"} == next(r.extras for r in postgres if r.name == "matryoshka-train")
    assert "binary" in next(r.extras for r in postgres if r.name == "psycopg")
    assert {"pytest", "hypothesis", "ruff"} <= {r.name for r in test}
    assert [Requirement(r).extras for r in extras["dev"] if Requirement(r).name == "matryoshka-train"] == [{"test"}]
    for tracker in ("tensorboard", "wandb", "mlflow", "trackio"):
        assert [_name(r) for r in extras[tracker]] == [tracker]
