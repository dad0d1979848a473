"""Test hooks, switched on by environment variables (documented in docs/distributed.md).

They let the test suite act inside training processes it cannot reach otherwise (processes started
by ``accelerate launch``), and do nothing unless their variable is set:

* ``MTRAIN_TEST_SIGTERM_AT_STEP=k``: every process sends itself SIGTERM at the end of step k;
* ``MTRAIN_TEST_WEIGHT_DIGEST_DIR=DIR``: every process writes a digest of its final weights to
  ``DIR/rank-<r>.json`` (equal digests mean bitwise-equal weights);
* ``MTRAIN_TEST_HUB_DIR=DIR``: a push to the Hub is recorded instead of sent: the repo it would
  create and the files it would upload are appended to ``DIR/pushes.json``.

Production code knows them only through :func:`callbacks` and :func:`after_training`, called
once each by the training loop, and :func:`hub_api`, called by the push.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import RepoUrl
from huggingface_hub.utils import filter_repo_objects
from transformers import TrainerCallback

SIGTERM_AT_STEP = "MTRAIN_TEST_SIGTERM_AT_STEP"
WEIGHT_DIGEST_DIR = "MTRAIN_TEST_WEIGHT_DIGEST_DIR"
HUB_DIR = "MTRAIN_TEST_HUB_DIR"


class SigtermAtStep(TrainerCallback):
    """Sends this process SIGTERM at the end of step ``step`` (as a scheduler preempting the job would)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def callbacks() -> list[TrainerCallback]:
    """The trainer callbacks the environment asks for (none in normal use)."""
    at = os.environ.get(SIGTERM_AT_STEP)
    return [SigtermAtStep(int(at))] if at else []


def weight_digest(model: Any) -> str:
    """sha256 over every parameter's bytes, in name order: equal digests mean bitwise-equal weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu()
        t = t.float() if t.dtype == torch.bfloat16 else t
        h.update(name.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def after_training(model: Any, step: int) -> None:
    """With MTRAIN_TEST_WEIGHT_DIGEST_DIR set, every process writes its weights' digest."""
    target = os.environ.get(WEIGHT_DIGEST_DIR)
    if not target:
        return
    rank = int(os.environ.get("RANK", "0") or 0)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    Path(target).mkdir(parents=True, exist_ok=True)
    data = {"rank": rank, "world_size": world, "step": step, "sha256": weight_digest(model)}
    (Path(target) / f"rank-{rank}.json").write_text(json.dumps(data), encoding="utf-8")


class RecordingHubApi:
    """Stands in for ``huggingface_hub.HfApi`` in a push: what would be created and uploaded is
    written to ``DIR/pushes.json`` (one entry per call); nothing leaves the machine."""

    def __init__(self, target: Path):
        self.target = target

    def _record(self, entry: dict[str, Any]) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        path = self.target / "pushes.json"
        calls = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        path.write_text(json.dumps([*calls, entry], indent=1), encoding="utf-8")

    def create_repo(self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False, **kwargs: Any) -> Any:
        self._record({"call": "create_repo", "repo_id": repo_id, "private": private, "exist_ok": exist_ok})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id: str, folder_path: str, ignore_patterns: Any = None, **kwargs: Any) -> Any:
        root = Path(folder_path)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        kept = list(filter_repo_objects(files, ignore_patterns=ignore_patterns))  # the filter upload_folder applies
        readme = (root / "README.md").read_text(encoding="utf-8") if "README.md" in kept else None
        self._record({"call": "upload_folder", "repo_id": repo_id, "files": kept, "readme": readme})
        return None


def hub_api(api_class: Any) -> Any:
    """The Hub client a push uses: ``api_class()``, or the recorder when MTRAIN_TEST_HUB_DIR is set."""
    target = os.environ.get(HUB_DIR)
    return RecordingHubApi(Path(target)) if target else api_class()
