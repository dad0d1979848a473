"""training.compile_layers (issue 14): torch.compile on each encoder layer, in place. The run trains
to the weights of an uncompiled run, the saved model is a plain one, and `auto` leaves it off until
the GPU suite measures it."""

from __future__ import annotations

import torch
from conftest import assert_trained_alike, three_step_run
from sentence_transformers import SentenceTransformer

from matryoshka_train.models import compiled_layers


def test_install_compiles_each_encoder_layer_in_place_and_uninstall_undoes_it(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    names = sorted(model.state_dict())
    layers = compiled_layers.install(model)
    assert layers == list(model[0].auto_model.encoder.layer) and len(layers) == 2
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert sorted(model.state_dict()) == names  # compiled in place: no _orig_mod. prefixes to save
    compiled_layers.uninstall(layers)
    assert all(layer._compiled_call_impl is None for layer in layers)


def test_a_model_without_a_layer_list_is_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert compiled_layers.encoder_layers(model) == [] and compiled_layers.install(model) == []


def test_a_compiled_run_ends_with_the_weights_of_an_uncompiled_one(tiny_config, no_dropout_model_dir, tmp_path):
    weights, said = {}, {}
    for compiled in (False, True):
        lines: list[str] = []
        results, weights[compiled] = three_step_run(tiny_config, no_dropout_model_dir, tmp_path / f"c{compiled}",
                                                    echo=lambda text, lines=lines: lines.append(str(text)),
                                                    compile_layers=compiled)
        assert results["speed"]["compile_layers"] is compiled
        said[compiled] = "\n".join(lines)
        saved = SentenceTransformer(str(tmp_path / f"c{compiled}"), device="cpu")
        assert all(layer._compiled_call_impl is None for layer in saved[0].auto_model.encoder.layer)
    assert "compile_layers: 2 encoder layers compiled" in said[True]
    assert "compiled (dynamic shapes)" not in said[False]
    assert_trained_alike(weights[True], weights[False], no_dropout_model_dir)


def test_check_prints_it_and_auto_leaves_it_off(write_config, tiny_config, capsys):
    from matryoshka_train.cli import main
    from matryoshka_train.config import validate
    from matryoshka_train.training.speed import decide

    assert main(["check", str(write_config(tiny_config))]) == 0
    assert "compile_layers: off (auto: measured 0.85x the default forward on CPU" in capsys.readouterr().out
    training = validate(tiny_config).training
    assert not decide(training, "cuda").compile_layers
    assert "0.80-1.11x the packed forward" in decide(training, "cuda").reasons["compile_layers"]
