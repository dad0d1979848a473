"""Where a model came from, as a model card names it.

A card's ``base_model`` must be a Hugging Face Hub id: the Hub links it and refuses metadata that
is not one. A run names its model by hub id, local directory or ``package:<module>``; for the last
two the id is found, when it can be, in the model's own files: the sentence-transformers card in
the directory loads it by id (``SentenceTransformer('sentence-transformers/all-MiniLM-L6-v2')``),
or the package says it (a ``HUB_ID``/``MODEL_ID``/``REPO_ID`` attribute, or its docstring's
"Packaged Hugging Face <id> model"). Nothing is looked up on the network.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from .loading import PACKAGE_PREFIX, is_local, resolve_model_path

_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
# the usage snippet of a sentence-transformers card: SentenceTransformer("org/name")
_CARD_LOAD = re.compile(rf"SentenceTransformer\(\s*['\"]({_ID})['\"]")
_PACKAGED = re.compile(rf"(?:Packaged|packaged)[^\n]*?\b({_ID})\b")
_PACKAGE_ATTRS = ("HUB_ID", "MODEL_ID", "REPO_ID")


@dataclass(frozen=True)
class BaseModel:
    """``hub_id``: the Hub id (None when unknown); ``label``: what a card says when there is none."""

    hub_id: str | None
    label: str


def base_model_of(name_or_path: str) -> BaseModel:
    """The Hub id a card should name for the model ``name_or_path`` loads (see the module docstring)."""
    if not is_local(name_or_path):
        return BaseModel(name_or_path, name_or_path)
    label = name_or_path.removeprefix(PACKAGE_PREFIX) if name_or_path.startswith(PACKAGE_PREFIX) \
        else Path(name_or_path.rstrip("/\\")).name or name_or_path
    hub_id = _from_package(name_or_path) if name_or_path.startswith(PACKAGE_PREFIX) else None
    if hub_id is None:
        try:
            directory = Path(resolve_model_path(name_or_path)).expanduser()
        except Exception:  # noqa: BLE001 - a package that cannot be imported: the card names it, the run reports it
            directory = None
        hub_id = _from_card(directory) if directory is not None else None
    return BaseModel(hub_id, label)


def _from_package(name_or_path: str) -> str | None:
    try:
        module = importlib.import_module(name_or_path[len(PACKAGE_PREFIX):])
    except ImportError:
        return None
    for attr in _PACKAGE_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, str) and re.fullmatch(_ID, value):
            return value
    match = _PACKAGED.search(module.__doc__ or "")
    return match.group(1) if match else None


def _from_card(directory: Path) -> str | None:
    card = directory / "README.md"
    if not card.is_file():
        return None
    try:
        text = card.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = _CARD_LOAD.search(text)
    if match is None or match.group(1) == "sentence_transformers_model_id":
        return None
    return match.group(1)
