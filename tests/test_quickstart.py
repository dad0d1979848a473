"""The shipped quickstart, run as users run it (real all-MiniLM-L6-v2 from its PyPI package, the
shipped data, the CLI): it must make the small dims clearly better and keep the full size."""

from __future__ import annotations

import json

from conftest import REPO

from matryoshka_train.cli import main


def test_quickstart_improves_dim_32_and_keeps_full_size(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the config's data paths are relative to the repository root
    out = tmp_path / "quickstart"
    assert main(["run", "configs/quickstart.yaml", "--set", f"training.output_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "quickstart-heldout · cosine_accuracy" in printed

    results = json.loads((out / "results.json").read_text())
    assert results["dims"] == [384, 256, 128, 64, 32]
    heldout = results["primary_metric"]["quickstart-heldout"]
    before, after = results["before"]["quickstart-heldout"], results["after"]["quickstart-heldout"]
    # 250 held-out triplets: +0.03 is 7-8 triplets more, well beyond the run-to-run noise
    assert after["32"][heldout] >= before["32"][heldout] + 0.03
    assert after["384"][heldout] >= before["384"][heldout] - 0.01

    sts = results["primary_metric"]["sts-independent"]
    sts_before, sts_after = results["before"]["sts-independent"], results["after"]["sts-independent"]
    assert sts_after["32"][sts] > sts_before["32"][sts]            # carries over to unseen styles/topics
    assert sts_after["384"][sts] >= sts_before["384"][sts] - 0.005  # full size held
    assert results["carbon"]["tracked"] is True and results["carbon"]["energy_kwh"] > 0
