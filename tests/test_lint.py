"""The tree is clean under the ruff rules in pyproject.toml (line length, import order, pyupgrade,
pyflakes, bugbear). ruff is in the test extras, so a missing ruff is a failure, not a skip."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_ruff_check_passes():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
