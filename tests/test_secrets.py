"""Secrets from the environment never reach an output file, the terminal or a log, even when a
config repeats one; configs are data (no code runs from YAML)."""

from __future__ import annotations

import logging
from pathlib import Path

from matryoshka_train.cli import main
from matryoshka_train.reporting.redact import RedactingFilter, is_secret_name, redact, secrets

FAKE = "hf_FAKEtokenDoNotLeak0123456789"


def test_which_variables_count_as_secrets():
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "WANDB_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "DB_PASSWORD",
        "MY_APIKEY",
    ):
        assert is_secret_name(name), name
    for name in ("TOKENIZERS_PARALLELISM", "HF_HOME", "PATH", "KEYBOARD_LAYOUT"):
        assert not is_secret_name(name), name
    env = {"HF_TOKEN": FAKE, "WANDB_API_KEY": "short", "GH_TOKEN": "false", "HOME": "/root/secret-looking-value"}
    assert secrets(env) == {FAKE: "HF_TOKEN"}  # too short, a plain word, or not a secret's name: kept
    assert redact(f"revision={FAKE}!", env) == "revision=[REDACTED:HF_TOKEN]!"


def test_the_log_filter_redacts_formatted_messages(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE)
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "loading %s", (f"org/m@{FAKE}",), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "loading org/m@[REDACTED:HF_TOKEN]"


def test_a_token_in_the_config_appears_in_no_output_file(tiny_config, write_config, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE)
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "pa55word-also-secret")
    tiny_config["model"]["revision"] = FAKE  # a field the config keeps and writes back
    tiny_config["evaluation"]["evaluators"][0]["name"] = f"eval-{FAKE}"  # lands in metrics, results, card
    tiny_config["datasets"][0]["name"] = "pa55word-also-secret"
    tiny_config["evaluation"]["evaluators"][0]["dataset"] = "pa55word-also-secret"
    tiny_config["training"].update(save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2)
    out = Path(tiny_config["training"]["output_dir"])

    assert main(["check", str(write_config(tiny_config))]) == 0
    assert main(["run", str(write_config(tiny_config))]) == 0
    printed = capsys.readouterr()

    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.resolved.yaml", "metrics.jsonl", "results.json", "README.md", "model.safetensors"} <= names
    assert any("checkpoint-2" in str(p) for p in files)
    for secret in (FAKE, "pa55word-also-secret"):
        assert secret not in printed.out and secret not in printed.err
        leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not leaked, f"{secret} written to {leaked}"
    assert "[REDACTED:HF_TOKEN]" in (out / "config.resolved.yaml").read_text()
    assert "[REDACTED:HF_TOKEN]" in (out / "results.json").read_text()


def test_yaml_tags_cannot_run_code(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    assert main(["check", str(path)]) == 2
    assert "malformed YAML" in capsys.readouterr().err
    assert not marker.exists()
