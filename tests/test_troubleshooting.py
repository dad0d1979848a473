"""docs/troubleshooting.md lists every error message the code can raise: each message's longest
fixed fragment (read from the source) must appear in the document."""

from __future__ import annotations

import ast

from conftest import REPO

RAISERS = {"ConfigError": 0, "DataError": 0, "TrainingAborted": 0, "UserError": 0, "ValueError": 0, "Problem": 1}
RETURNING = {"filecheck.py", "faults.py"}  # these build messages in return statements


def _fragment(node: ast.AST) -> str | None:
    if isinstance(node, ast.BinOp):
        return _fragment(node.left)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        parts = [node.value]
    elif isinstance(node, ast.JoinedStr):
        parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
    else:
        return None
    best = max((p.strip(" ;:.,'()") for p in parts), key=len, default="")
    return best if len(best) >= 12 else None


def messages() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "matryoshka_train").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            arg = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in RAISERS:
                i = RAISERS[node.func.id]
                arg = node.args[i] if len(node.args) > i else None
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append" \
                    and getattr(node.func.value, "id", "") == "problems" and node.args:
                arg = node.args[0]
            elif path.name in RETURNING and isinstance(node, ast.Return) and node.value is not None:
                arg = node.value
            fragment = _fragment(arg) if arg is not None else None
            if fragment:
                found.append((path.name, fragment))
    return found


def test_every_error_message_is_in_troubleshooting():
    doc = (REPO / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    found = messages()
    assert len(found) > 60
    missing = [f"{file}: {fragment}" for file, fragment in found if fragment not in doc]
    assert not missing, "add these messages to docs/troubleshooting.md:\n" + "\n".join(missing)
