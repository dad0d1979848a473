"""Keeping secrets out of everything a run writes or prints.

Hub tokens and API keys belong in the environment (``HF_TOKEN``, ``WANDB_API_KEY``, …), never in a
config. Still, a value can leak: pasted into a config field, echoed in an error, recorded by a
library in a model card. So every file we write (config.resolved.yaml, metrics.jsonl,
results.json, the model card, checkpoints' JSON) and every line ``mtrain`` prints goes through
:func:`redact`, which replaces the value of every secret-looking environment variable with
``[REDACTED:NAME]``.

A variable is secret-looking when a word of its name (split at ``_``) is or ends in TOKEN, KEY,
SECRET, PASSWORD, PASSWD or CREDENTIALS (``HF_TOKEN``, ``WANDB_API_KEY``, ``AWS_SECRET_ACCESS_KEY``,
``DB_PASSWORD``; not ``TOKENIZERS_PARALLELISM``), and its value is at least
:data:`MIN_SECRET_LENGTH` characters and not a plain word like ``true`` (redacting ``1`` or
``false`` everywhere would garble the outputs and protect nothing).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

MIN_SECRET_LENGTH = 8
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIALS")
NOT_SECRETS = {"true", "false", "none", "null", "yes", "no", "disabled", "enabled"}
# text files a run writes (checkpoints hold more JSON); weights and pickles are left alone
TEXT_SUFFIXES = {".json", ".jsonl", ".yaml", ".yml", ".md", ".txt", ".csv"}


def is_secret_name(name: str) -> bool:
    return any(word.endswith(SECRET_WORDS) for word in re.split(r"[^A-Z0-9]+", name.upper()) if word)


def secrets(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Secret value -> the name of the variable holding it, longest values first."""
    env = os.environ if environ is None else environ
    found = {
        value: name
        for name, value in env.items()
        if is_secret_name(name) and len(value) >= MIN_SECRET_LENGTH and value.strip().lower() not in NOT_SECRETS
    }
    return dict(sorted(found.items(), key=lambda item: -len(item[0])))


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    for value, name in secrets(environ).items():
        if value in text:
            text = text.replace(value, f"[REDACTED:{name}]")
    return text


def write_text(path: str | os.PathLike, text: str) -> None:
    """``Path.write_text`` with secrets removed (UTF-8)."""
    Path(path).write_text(redact(text), encoding="utf-8")


def scrub_tree(root: str | os.PathLike) -> list[Path]:
    """Redact every text file under ``root`` in place (files other libraries wrote, such as the
    model card sentence-transformers writes). Returns the files that changed."""
    if not secrets():
        return []
    changed = []
    for path in Path(root).rglob("*"):
        if not path.is_file() or path.suffix.lower() not in TEXT_SUFFIXES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        clean = redact(text)
        if clean != text:
            path.write_text(clean, encoding="utf-8")
            changed.append(path)
    return changed


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from each record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is the handler's business, not ours
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_filter() -> None:
    """Redact secrets in everything logged through the root logger's handlers and those the
    libraries attach to their own loggers."""
    for name in ("", "matryoshka_train", "transformers", "datasets", "sentence_transformers", "accelerate"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


class _RedactingStream:
    """A text stream that redacts what is written to it (other attributes pass through)."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacted_output() -> Iterator[None]:
    """Redact everything printed to stdout/stderr inside the block, libraries' output included
    (the trainer prints its metrics, progress bars print their descriptions). A secret is caught
    when it is written in one piece, as print, logging and tqdm do."""
    if not secrets():
        yield
        return
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _RedactingStream(sys.stdout), _RedactingStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
