"""pydantic's validation errors as one line per problem, each with its YAML path, and the one
"did you mean" every message uses."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import Problem


def schema_problems(exc: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """One :class:`Problem` per error of ``exc``, raised validating the section class ``root``."""
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(_printable(p) for p in err["loc"])
        where = ".".join(str(p) for p in loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _section_at(root, loc[:-1])
            allowed = list(parent.model_fields) if parent else []
            msg = f"unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), allowed)}"
            if not did_you_mean(str(loc[-1]), allowed) and allowed:
                msg += f"; allowed here: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind in ("value_error", "assertion_error"):
            # a validator may report several problems, one per line, each may lead with its own path
            for line in str(err["msg"]).removeprefix("Value error, ").splitlines():
                problems.append(_located(where, line, list(root.model_fields)))
            continue
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            msg = f"{err['msg'][0].lower()}{err['msg'][1:]} (got {shown})"
        problems.append(Problem(where or "config", msg))
    return problems


def _printable(part: object) -> object:
    """A key as it can be shown on one line: a key holding a newline or other control character
    (possible in YAML) is shown escaped, e.g. 'a\\nb'."""
    if isinstance(part, str) and not part.isprintable():
        return part.encode("unicode_escape").decode("ascii")
    return part


def _located(where: str, msg: str, sections: list[str]) -> Problem:
    """A validator's message, with the path it names at its front (``a.b.c: ...``, or a top-level
    section of the root such as ``distill: ...``) taken as *where*."""
    head = msg.split(": ", 1)[0]
    if ": " in msg and (("." in head and " " not in head) or head in sections):
        return Problem(head, msg.split(": ", 1)[1])
    return Problem(where or "config", msg)


def _section_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The Section class that sits at ``loc`` inside ``model``, walking lists and optionals."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue  # list items: the item type is resolved from the annotation below
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """list[X] -> X, X | None -> X."""
    for _ in range(3):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) in (list, typing.Union, types.UnionType) and args:
            annotation = args[0]
    return annotation


def did_you_mean(word: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (or one equal but for case); "" if none."""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not match:
        match = [c for c in choices if c.lower() == word.lower()]
    return f"; did you mean '{match[0]}'?" if match else ""
