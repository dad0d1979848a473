"""Finding the line at fault in a data file the datasets library could not read.

``datasets.load_dataset`` reports a bad byte or a broken JSON line as "an error occurred while
generating the dataset", without the file or line. When a read fails we read the files again
ourselves, line by line, and name the first line that is not UTF-8 or (for JSON Lines) not JSON.
This runs only after a failure, so a good file is read once, by the datasets library.
"""

from __future__ import annotations

import json
from pathlib import Path

TEXT_FORMATS = ("json", "csv", "tsv")


def diagnose(files: list[Path], fmt: str) -> str | None:
    """A one-line description of the first unreadable line in ``files``, or None if none is found."""
    if fmt not in TEXT_FORMATS:
        return None
    for path in files:
        found = first_bad_utf8_line(path) or (first_bad_json_line(path) if fmt == "json" else None)
        if found:
            return found
    return None


def first_bad_utf8_line(path: Path) -> str | None:
    with Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (
                    f"{path} line {lineno} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
                )
    return None


def first_bad_json_line(path: Path) -> str | None:
    """JSON Lines: one JSON object per line (blank lines allowed). A file that is one JSON document
    (an array, or an object of columns) is checked as a whole."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("[") or (stripped.startswith("{") and "\n" not in stripped.strip()):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return f"{path} line {exc.lineno} column {exc.colno} is not valid JSON ({exc.msg}); fix or remove it"
        return None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return (
                f"{path} line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}); "
                "each line must be one JSON object, e.g. {\"anchor\": \"...\", \"positive\": \"...\"}"
            )
        if not isinstance(value, dict):
            kind = type(value).__name__
            return f"{path} line {lineno} is a JSON {kind}, not an object; each line must be one JSON object"
    return None
