"""Publishing a finished run to the Hugging Face Hub: `mtrain push OUTPUT_DIR`, and the push at the
end of `mtrain run` when the config's ``hub.repo_id`` is set.

The push is huggingface_hub's own: ``HfApi.create_repo`` (``exist_ok``, so a second push updates the
repo) then ``HfApi.upload_folder`` of the output directory, the same calls sentence-transformers'
``push_to_hub(local_model_path=...)`` makes. Uploading the directory rather than re-saving the model
sends exactly what the run wrote and checked: the model, its card (README.md, per-dim section on
top), results.json, config.resolved.yaml, metrics.jsonl and emissions.csv. Checkpoints, stage
folders and unfinished checkpoint writes stay home (:data:`IGNORE`).

The token is never read from a config: huggingface_hub finds it in ``HF_TOKEN`` or a saved
``hf auth login``. Every file a run writes has been through :mod:`.redact` already.

A push that fails (no network, no token, no write access) raises :class:`PushFailed`: one line
naming the problem, saying the run is kept on disk and giving the command that retries.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from .. import testing
from ..config.schema import HubConfig, RunConfig, repo_id_problem
from ..errors import UserError

# never uploaded: checkpoints (hub.checkpoints pushes those), a multi-stage run's stage folders,
# checkpoints being written (training.checkpoints' staging prefix), `mtrain report` output
IGNORE = ["checkpoint-*", "checkpoint-*/**", "stage-*/**", ".partial-*", ".partial-*/**", "report/**", "*.lock"]
# the model id sentence-transformers' card uses in its usage snippet when it knows none
CARD_PLACEHOLDER = "sentence_transformers_model_id"
RESOLVED = "config.resolved.yaml"


class PushFailed(UserError):
    """The run finished and is on disk; only the push to the Hub failed (exit code 1)."""

    exit_code = 1
    same_on_every_process = False


def unfinished(out: Path) -> str | None:
    """Why ``out`` is not the output of a finished run (None when it is one): a run writes its model
    (modules.json and weights) and then results.json, last."""
    if not out.is_dir():
        return f"{out} is not a directory: give the training.output_dir of a finished `mtrain run`"
    missing = [name for name in ("modules.json", "results.json") if not (out / name).is_file()]
    weights = [p for p in out.rglob("*") if p.suffix in (".safetensors", ".bin")
               and not p.relative_to(out).parts[0].startswith(("checkpoint-", "stage-", ".partial-"))]
    if not weights:
        missing.append("model weights")
    if missing:
        return (f"{out} is not a finished run (no {', '.join(missing)}): push the training.output_dir of a "
                "`mtrain run` that completed")
    try:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        results = None
    if not isinstance(results, dict) or "dims" not in results:
        return f"{out}/results.json was not written by a finished `mtrain run`: push the run's training.output_dir"
    return None


def saved_hub(out: Path) -> dict[str, Any]:
    """The hub section the run was configured with (from its config.resolved.yaml; empty if none)."""
    try:
        saved = yaml.safe_load((out / RESOLVED).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    hub = saved.get("hub") if isinstance(saved, dict) else None
    return hub if isinstance(hub, dict) else {}


def push_run(out: str | Path, repo_id: str | None = None, private: bool | None = None,
             echo: Callable[[str], None] = print) -> str:
    """Push the finished run in ``out`` to ``repo_id`` (default: the run's hub.repo_id). ``private``
    None keeps the run's hub.private (None there too: the Hub's default). Returns the repo's URL."""
    out = Path(out)
    problem = unfinished(out)
    if problem:
        raise UserError(problem, where="OUTPUT_DIR")
    saved = saved_hub(out)
    asked = repo_id
    repo_id = repo_id or saved.get("repo_id")
    if not repo_id:
        raise UserError(f"no repo to push {out} to: pass --repo-id NAMESPACE/NAME, or set hub.repo_id in the "
                        "config", where="--repo-id")
    problem = repo_id_problem(repo_id)
    if problem:
        raise UserError(problem, where="--repo-id" if asked else "hub.repo_id")
    if private is None:
        private = saved.get("private")
    # the command that retries: the repo only when it is not the run's own hub.repo_id
    other = asked if asked and asked != saved.get("repo_id") else None
    retry = f"mtrain push {shlex.quote(str(out))}" + (f" --repo-id {other}" if other else "")
    echo(f"Pushing {out} to the Hub as {repo_id} …")
    api = testing.hub_api(HfApi)
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        full_id = getattr(repo, "repo_id", None) or repo_id
        name_in_card(out / "README.md", full_id, [saved.get("repo_id")])
        api.upload_folder(
            repo_id=full_id,
            folder_path=str(out),
            commit_message="Upload Matryoshka model trained with matryoshka-train",
            ignore_patterns=IGNORE,
        )
    except Exception as exc:  # noqa: BLE001 - any failure of the push keeps the run and says how to retry
        raise PushFailed(
            f"pushing to the Hub as {repo_id} failed: {push_problem(exc)}. The run is kept in {out}; "
            f"retry with: {retry}",
            where="hub",
        ) from exc
    url = getattr(repo, "url", None) or f"https://huggingface.co/{full_id}"
    echo(f"Pushed to {url}")
    return str(url)


def push_problem(exc: BaseException) -> str:
    """One line naming why a push failed, with what fixes it when that is known."""
    if isinstance(exc, OfflineModeIsEnabled):
        return "the Hub is unreachable from here (offline mode)"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status == 401:
        if get_token() is None:
            return "no Hugging Face token found: set HF_TOKEN or run `hf auth login`"
        return "the Hub refused the token (401): set HF_TOKEN to a valid token or run `hf auth login`"
    if isinstance(exc, HfHubHTTPError) and status == 403:
        return "the token may not write there (403): use a token with write access to that namespace"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def name_in_card(readme: Path, repo_id: str, previous: list[str | None]) -> None:
    """The card's usage snippet loads the model by the id it is pushed under."""
    if not readme.is_file() or "/" not in repo_id:
        return
    text = readme.read_text(encoding="utf-8")
    new = text
    for old in [CARD_PLACEHOLDER, *[p for p in previous if p and p != repo_id]]:
        new = new.replace(f'SentenceTransformer("{old}")', f'SentenceTransformer("{repo_id}")')
    if new != text:
        readme.write_text(new, encoding="utf-8")


def push_after_run(config: RunConfig, echo: Callable[[str], None] = print) -> str | None:
    """`mtrain run`'s push, once the outputs are written (main process only; see the module docstring)."""
    hub = config.hub
    if hub.repo_id is None or not hub.push:
        return None
    return push_run(config.training.output_dir, hub.repo_id, hub.private, echo)


def hub_lines(hub: HubConfig) -> tuple[list[str], list[str]]:
    """`mtrain check`'s lines and warnings about publishing."""
    if hub.repo_id is None:
        return [], []
    visibility = {True: "private", False: "public", None: "the account's default visibility"}[hub.private]
    what = ("the final model, card and results.json are pushed after the run" if hub.push
            else "nothing is pushed when the run ends (hub.push: false)")
    lines = [f"Publish: https://huggingface.co/{hub.repo_id} ({visibility}): {what}"
             + (f"; checkpoints too ({hub.checkpoints})" if hub.checkpoints != "no" else "")
             + ". Not verified by check (no upload is tried)"]
    warnings = []
    if get_token() is None:
        warnings.append("hub.repo_id: no Hugging Face token found (HF_TOKEN or `hf auth login`), so the push would "
                        "fail; the run would keep its model and `mtrain push OUTPUT_DIR` retries")
    return lines, warnings
