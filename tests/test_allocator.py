"""The CUDA allocator setting (issue 14): `mtrain run` turns on expandable segments before torch loads,
unless the user chose a setting; `mtrain check` and results.json say which and why."""

import os

from matryoshka_train.training import allocator


def test_expandable_by_default_and_the_users_setting_kept():
    env: dict[str, str] = {}
    assert allocator.default_to_expandable(env)
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    value, why = allocator.describe(env)
    assert value == "expandable_segments:True" and why.startswith("auto: set by mtrain")
    assert not allocator.default_to_expandable(env)  # a second call (a launched process) changes nothing

    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        env = {name: "expandable_segments:False"}
        assert not allocator.default_to_expandable(env)
        assert env == {name: "expandable_segments:False"}
        assert allocator.describe(env) == ("expandable_segments:False", f"{name} set in the environment")
    value, why = allocator.describe({})  # a run started from Python, nothing in its environment
    assert value == "default" and "unset" in why and "`mtrain run` sets" in why


def test_run_sets_it_before_training_and_a_cuda_plan_reports_it(write_config, tiny_config, monkeypatch):
    from matryoshka_train.cli import main
    from matryoshka_train.config import validate
    from matryoshka_train.training.speed import decide

    for name in (*allocator.VARIABLES, allocator.SET_BY_US):
        monkeypatch.delenv(name, raising=False)
    loaded = []
    monkeypatch.setattr("matryoshka_train.training.entry.run", lambda *a, **k: loaded.append(
        os.environ.get("PYTORCH_CUDA_ALLOC_CONF")))
    assert main(["run", str(write_config(tiny_config))]) == 0
    assert loaded == ["expandable_segments:True"]
    for name in (*allocator.VARIABLES, allocator.SET_BY_US):
        monkeypatch.delenv(name, raising=False)
    assert decide(validate(tiny_config).training, "cuda", precision="bf16").cuda_allocator == "default"
    assert main(["check", str(write_config(tiny_config))]) == 0  # check sets it as run does, and prints it
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    training = validate(tiny_config).training
    gpu = decide(training, "cuda", precision="bf16")
    assert gpu.cuda_allocator == "expandable_segments:True" and "set by mtrain" in gpu.reasons["cuda_allocator"]
    line = "  cuda_allocator: expandable_segments:True (auto: set by mtrain"
    assert any(text.startswith(line) for text in gpu.lines())
    assert decide(training, "cpu").cuda_allocator is None
    assert not any("cuda_allocator" in line for line in decide(training, "cpu").lines())
