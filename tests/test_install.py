"""scripts/install.sh's torch step, with pip, python and nvidia-smi replaced by stubs that record
what they were asked: the CPU build comes from PyTorch's CPU index, falls back to the configured
index when that one cannot be reached, and an installed torch is kept."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _stub(path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def _install(tmp_path, *, torch_installed: bool, cpu_index_reachable: bool, gpu: bool = False) -> list[list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "pip.log"
    # pip: one line per call; a call to the CPU index fails when it is "unreachable"
    _stub(bin_dir / "pip-stub", f'echo "$*" >> {log}\n'
          + ("" if cpu_index_reachable else f'[[ "$*" == *{CPU_INDEX}* ]] && exit 1\n') + "exit 0\n")
    # python: `-c "import torch"` succeeds only when torch is "installed"; anything else prints a prefix
    _stub(bin_dir / "python-stub", f'if [[ "$2" == "import torch" ]]; then exit {0 if torch_installed else 1}; fi\n'
          "echo /stub-prefix\n")
    _stub(bin_dir / "nvidia-smi", f"exit {0 if gpu else 1}\n")
    env = dict(os.environ, PIP=str(bin_dir / "pip-stub"), PYTHON=str(bin_dir / "python-stub"),
               PATH=f"{bin_dir}:{os.environ['PATH']}", EXTRAS="quickstart")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "installed matryoshka-train (extras: quickstart) into /stub-prefix" in proc.stdout
    return [line.split() for line in log.read_text().splitlines()]


def test_cpu_torch_comes_from_the_cpu_index(tmp_path):
    calls = _install(tmp_path, torch_installed=False, cpu_index_reachable=True)
    assert len(calls) == 2
    assert "torch==2.13.0" in calls[0] and calls[0][calls[0].index("--index-url") + 1] == CPU_INDEX
    assert "--timeout" in calls[0]
    assert calls[1][-1] == ".[quickstart]" and "-e" in calls[1]


def test_an_unreachable_cpu_index_falls_back_to_the_pinned_install(tmp_path):
    calls = _install(tmp_path, torch_installed=False, cpu_index_reachable=False)
    assert len(calls) == 3
    assert CPU_INDEX in calls[0]
    assert calls[1] == ["install", "--quiet", "torch==2.13.0"]
    assert calls[2][-1] == ".[quickstart]"


@pytest.mark.parametrize("gpu", [False, True])
def test_an_installed_torch_is_kept(tmp_path, gpu):
    calls = _install(tmp_path, torch_installed=True, cpu_index_reachable=True, gpu=gpu)
    assert len(calls) == 1 and calls[0][-1] == ".[quickstart]"


def test_a_gpu_machine_gets_the_default_torch(tmp_path):
    calls = _install(tmp_path, torch_installed=False, cpu_index_reachable=True, gpu=True)
    assert calls[0] == ["install", "--quiet", "torch"]
