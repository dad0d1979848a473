"""`mtrain run` and `mtrain check` end to end on the tiny model: outputs, exit codes, messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

from matryoshka_train.cli import main


def test_run_through_the_cli_writes_every_output(tiny_config, write_config, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", str(write_config(tiny_config)), "--set", f"training.output_dir={out}"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "tiny · cosine_accuracy" in printed and "before" in printed and "after" in printed

    results = json.loads((out / "results.json").read_text())
    assert results["dims"] == [32, 16, 8]
    for phase in ("before", "after"):
        assert set(results[phase]["tiny"]) == {"32", "16", "8"}
        for metrics in results[phase]["tiny"].values():
            assert 0.0 <= metrics["cosine_accuracy"] <= 1.0
    assert results["primary_metric"] == {"tiny": "cosine_accuracy"}
    assert set(results["carbon"]) >= {"energy_kwh", "emissions_kg", "duration_s"}
    assert results["train"]["steps"] == 4 and results["train"]["samples"] > 0
    assert results["train"]["runtime_s"] > 0 and results["train"]["samples_per_second"] > 0

    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "eval_before" and events[-1]["event"] == "eval_after"
    losses = [e["loss"] for e in events if e["event"] == "train" and "loss" in e]
    assert len(losses) == 4
    assert (out / "config.resolved.yaml").is_file()
    card = (out / "README.md").read_text()
    assert "Matryoshka evaluation (matryoshka-train)" in card and "| 8 |" in card


def test_saved_model_reloads_truncated_and_training_changed_it(tiny_config, tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from matryoshka_train.config import validate
    from matryoshka_train.training.entry import run

    run(validate(tiny_config), echo=lambda _: None)
    out = tiny_config["training"]["output_dir"]
    sentences = ["a river in winter", "copper lantern"]
    for dim in (32, 16, 8):
        emb = SentenceTransformer(out, truncate_dim=dim).encode(sentences)
        assert emb.shape == (2, dim)
    trained = SentenceTransformer(out).encode(sentences)
    base = SentenceTransformer(str(tiny_model_dir)).encode(sentences)
    assert abs(trained - base).max() > 1e-4


def test_run_refuses_a_non_empty_output_dir(tiny_config, write_config, capsys):
    out = tiny_config["training"]["output_dir"]
    os.makedirs(out)
    open(os.path.join(out, "keep.txt"), "w").close()
    assert main(["run", str(write_config(tiny_config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds files; pass --resume to continue the run in it, --overwrite" in err[0]
    assert os.listdir(out) == ["keep.txt"]


def test_check_passes_on_a_good_config(tiny_config, write_config, capsys):
    assert main(["check", str(write_config(tiny_config))]) == 0
    out = capsys.readouterr().out
    assert "Dataset tiny: 48 train / 16 eval rows" in out
    assert "Matryoshka dims: [32, 16, 8]" in out
    assert "8 per device × 1 device(s) × 1 accumulation = 8 global · world size 1 · sampler no_duplicates" in out
    assert "tiny: 15 negatives per anchor (other rows' positives and hard negatives)" in out
    assert out.rstrip().endswith("OK: a run would start.")


def test_check_reports_a_misspelled_key_in_one_line(tiny_config, write_config, capsys):
    tiny_config["training"]["per_device_train_bach_size"] = tiny_config["training"].pop("per_device_train_batch_size")
    assert main(["check", str(write_config(tiny_config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        ("error: training.per_device_train_bach_size: unknown key 'per_device_train_bach_size'; "
         "did you mean 'per_device_train_batch_size'?")
    ]


def test_check_names_columns_that_do_not_fit_the_loss(tiny_config, write_config, data_dir, capsys):
    tiny_config["datasets"][0]["source"]["path"] = str(data_dir / "pairs.jsonl")
    tiny_config["datasets"][0]["columns"] = ["sentence1", "sentence2", "score"]
    assert main(["check", str(write_config(tiny_config))]) == 2
    err = capsys.readouterr().err
    assert "datasets.0: MultipleNegativesRankingLoss needs two or more text columns" in err
    assert "the data has: sentence1, sentence2, score" in err


def test_check_names_a_missing_column_and_a_missing_file(tiny_config, write_config, capsys):
    tiny_config["datasets"][0]["columns"] = ["anchor", "positiv"]
    tiny_config["evaluation"]["evaluators"].append({"type": "sts", "source": {"path": "no/such/file.jsonl"}})
    assert main(["check", str(write_config(tiny_config))]) == 2
    err = capsys.readouterr().err
    assert "datasets.0.columns: column(s) positiv not in the data; it has: anchor, positive, negative" in err
    assert "evaluation.evaluators.1.source: file not found: no/such/file.jsonl" in err


def test_check_dims_larger_than_the_model(tiny_config, write_config, capsys):
    tiny_config["matryoshka"]["dims"] = [64, 32]
    assert main(["check", str(write_config(tiny_config))]) == 2
    assert "matryoshka.dims: dims [64] exceed the model's embedding size 32" in capsys.readouterr().err


def test_check_unknown_loss_argument(tiny_config, write_config, capsys):
    tiny_config["loss"] = {"name": "cached_mnrl", "kwargs": {"mini_batchsize": 4}}
    assert main(["check", str(write_config(tiny_config))]) == 2
    assert (
        "loss: unknown argument 'mini_batchsize' for CachedMultipleNegativesRankingLoss; did you mean "
        "'mini_batch_size'?"
        in capsys.readouterr().err
    )


def test_hub_sources_are_not_verified_offline_rather_than_failing(tiny_config, write_config, capsys):
    tiny_config["datasets"].append({"name": "hubset", "source": {"hub": "org/some-dataset"}})
    assert main(["check", str(write_config(tiny_config))]) == 0
    assert "datasets.1 (hubset): hub:org/some-dataset[train] not verified offline" in capsys.readouterr().out


def test_the_installed_console_script_runs_end_to_end(tiny_config, write_config, tmp_path):
    """The real process boundary: `python -m matryoshka_train run` (what `mtrain` and accelerate start)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "matryoshka_train", "run", str(write_config(tiny_config))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_periodic_evaluation_logs_every_dim_during_training(tiny_config, write_config, tmp_path):
    tiny_config["training"].update(eval_strategy="steps", eval_steps=2)
    assert main(["run", str(write_config(tiny_config))]) == 0
    events = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    periodic = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in periodic] == [2, 4]
    for dim in (32, 16, 8):
        assert 0.0 <= periodic[-1][f"eval_tiny_dim{dim}_cosine_accuracy"] <= 1.0
