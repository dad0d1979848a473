"""``model.prompts`` / ``training.prompts`` / ``datasets[].prompts``, and LoRA adapters
(``model.lora``), on the tiny model: what reaches the trainer's collator, what training does with
it, what is saved and what loads back."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch

from matryoshka_train.cli import main
from matryoshka_train.config import validate
from matryoshka_train.config.schema import LoraSettings, ModelConfig
from matryoshka_train.training.plan import trainer_prompts

TEXTS = ["a river under a bridge", "copper lantern in the harbor", "winter meadow"]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _events(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# prompts


def test_trainer_prompts_take_the_form_the_collator_reads(tiny_config):
    one = copy.deepcopy(tiny_config)
    one["training"]["prompts"] = {"anchor": "query: "}
    assert trainer_prompts(validate(one)) == {"anchor": "query: "}
    one["datasets"][0]["prompts"] = "passage: "  # the dataset's own prompts win
    assert trainer_prompts(validate(one)) == "passage: "

    two = copy.deepcopy(tiny_config)
    two["datasets"].append({**copy.deepcopy(two["datasets"][0]), "name": "other", "eval": None})
    two["training"]["prompts"] = {"anchor": "query: "}
    assert trainer_prompts(validate(two)) == {"anchor": "query: "}  # shared: no per-dataset nesting
    two["datasets"][1]["prompts"] = {"positive": "passage: "}
    assert trainer_prompts(validate(two)) == {"tiny": {"anchor": "query: "}, "other": {"positive": "passage: "}}
    del two["training"]["prompts"]
    assert trainer_prompts(validate(two)) == {"tiny": {}, "other": {"positive": "passage: "}}
    assert trainer_prompts(validate(tiny_config)) is None


def test_the_collator_prepends_each_datasets_prompts(tiny_model_dir, tiny_config):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    two = copy.deepcopy(tiny_config)
    two["datasets"].append({**copy.deepcopy(two["datasets"][0]), "name": "other", "eval": None})
    two["datasets"][0]["prompts"] = {"anchor": "query: ", "positive": "passage: "}
    model = SentenceTransformer(str(tiny_model_dir))
    collator = SentenceTransformerDataCollator(preprocess_fn=model.preprocess, prompts=trainer_prompts(validate(two)))
    tokenizer = model.tokenizer

    def decoded(dataset_name: str, column: str) -> str:
        rows = [{"dataset_name": dataset_name, "anchor": "river", "positive": "harbor", "negative": "meadow"}]
        ids = collator(rows)[f"{column}_input_ids"][0]
        return tokenizer.decode(ids, skip_special_tokens=True)

    assert decoded("tiny", "anchor") == "query : river"
    assert decoded("tiny", "positive") == "passage : harbor"
    assert decoded("tiny", "negative") == "meadow"
    assert decoded("other", "anchor") == "river"


def test_a_run_with_prompts_trains_on_them_and_saves_them(tiny_config, write_config, tmp_path):
    tiny_config["training"]["max_steps"] = 1
    tiny_config["evaluation"]["before"] = False
    plain = copy.deepcopy(tiny_config)
    plain["training"]["output_dir"] = str(tmp_path / "plain")
    assert main(["run", str(write_config(plain))]) == 0

    tiny_config["model"]["prompts"] = {"query": "query: ", "document": "passage: "}
    tiny_config["model"]["default_prompt_name"] = "query"
    tiny_config["training"]["prompts"] = {"anchor": "query: ", "positive": "passage: ", "negative": "passage: "}
    assert main(["run", str(write_config(tiny_config))]) == 0
    out = tmp_path / "out"

    # the same data, seed and model: only the prompts differ, so the first step's loss does
    loss = [next(e["loss"] for e in _events(d) if e.get("event") == "train") for d in (out, tmp_path / "plain")]
    assert loss[0] != pytest.approx(loss[1], abs=1e-6), loss
    results = json.loads((out / "results.json").read_text())
    assert results["pretokenize"] is None  # prompted texts are tokenized by the collator, with their prompts

    saved = json.loads((out / "config_sentence_transformers.json").read_text())
    assert saved["prompts"]["query"] == "query: " and saved["prompts"]["document"] == "passage: "
    assert saved["default_prompt_name"] == "query"

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(out))
    assert model.prompts["query"] == "query: " and model.default_prompt_name == "query"
    # the default prompt applies to plain encode: the same as asking for it by name
    by_name = model.encode(TEXTS, prompt_name="query", convert_to_tensor=True)
    assert torch.allclose(model.encode(TEXTS, convert_to_tensor=True), by_name, atol=1e-6)
    assert not torch.allclose(model.encode(TEXTS, prompt="", convert_to_tensor=True), by_name, atol=1e-4)


def test_a_prompt_for_a_column_the_data_lacks_is_one_line(tiny_config, write_config, capsys):
    tiny_config["datasets"][0]["prompts"] = {"anchr": "query: "}
    assert main(["check", str(write_config(tiny_config))]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line == ("error: datasets.0.prompts: no column 'anchr' in the training data (columns: anchor, negative, "
                    "positive); did you mean 'anchor'?")


def test_default_prompt_name_must_name_a_prompt():
    with pytest.raises(ValueError, match="default_prompt_name 'query' is not a key of model.prompts"):
        ModelConfig(name_or_path="m", prompts={"document": "passage: "}, default_prompt_name="query")


# --------------------------------------------------------------------------------------------
# LoRA

needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs the peft extra")


def _lora_model(tiny_model_dir, **settings):
    from matryoshka_train.models import load_model

    return load_model(ModelConfig(name_or_path=str(tiny_model_dir),
                                  lora=LoraSettings(r=4, target_modules=["query", "value"], **settings)))


@needs_peft
def test_only_the_adapter_is_trainable(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    # 2 layers x (query, value) x (A: r x 32 + B: 32 x r), r = 4
    assert sum(trainable.values()) == 2 * 2 * (4 * 32 + 32 * 4)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


@needs_peft
def test_the_saved_model_and_adapter_load_back_to_the_same_embeddings(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from matryoshka_train.models import lora

    model = _lora_model(tiny_model_dir)
    with torch.no_grad():  # a trained-looking adapter (lora_B starts at zero)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    in_memory = model.encode(TEXTS, convert_to_tensor=True)
    base = SentenceTransformer(str(tiny_model_dir)).encode(TEXTS, convert_to_tensor=True)
    assert not torch.allclose(in_memory, base, atol=1e-3)

    lora.save_trained(model, tmp_path / "out", str(tiny_model_dir))
    merged = SentenceTransformer(str(tmp_path / "out"))
    assert not any("lora_" in n for n, _ in merged.named_parameters())  # a plain model
    assert torch.allclose(merged.encode(TEXTS, convert_to_tensor=True), in_memory, atol=1e-5)
    adapted = lora.load_adapter(SentenceTransformer(str(tiny_model_dir)), tmp_path / "out" / "adapter")
    assert torch.allclose(adapted.encode(TEXTS, convert_to_tensor=True), in_memory, atol=1e-5)
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir) and config["r"] == 4


@needs_peft
def test_a_lora_run_trains_the_adapter_and_keeps_the_base_weights(tiny_config, tiny_model_dir, write_config, tmp_path):
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    tiny_config["model"]["lora"] = {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}
    tiny_config["training"].update(max_steps=3, learning_rate=1e-2)
    assert main(["run", str(write_config(tiny_config))]) == 0
    out = tmp_path / "out"
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    b_keys = [k for k in adapter if "lora_B" in k]
    assert len(b_keys) == 4 and all(adapter[k].abs().max() > 0 for k in b_keys)  # B starts at zero: it trained

    base = SentenceTransformer(str(tiny_model_dir))[0].auto_model.state_dict()
    merged = SentenceTransformer(str(out))[0].auto_model.state_dict()
    assert set(base) == set(merged)
    for key, value in base.items():
        module = key.rsplit(".", 1)[0]
        if key.endswith(("query.weight", "value.weight")):  # base + scale * B @ A, nothing else
            a = adapter[f"{module}.lora_A.weight"]
            b = adapter[f"{module}.lora_B.weight"]
            assert torch.allclose(merged[key], value + (8 / 4) * b @ a, atol=1e-6), key
        else:
            assert torch.equal(merged[key], value), key  # embeddings, other layers, biases: untouched
    results = json.loads((out / "results.json").read_text())
    assert set(results["after"]["tiny"]) == {"32", "16", "8"}  # the adapted model was evaluated at every dim


@needs_peft
def test_check_refuses_lora_settings_peft_refuses(tiny_config, write_config, capsys):
    tiny_config["model"]["lora"] = {"target_modules": ["not_a_layer"]}
    assert main(["check", str(write_config(tiny_config))]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line.startswith("error: model.lora: peft cannot add this adapter: Target modules {'not_a_layer'} not found")
    assert line.endswith("set model.lora.target_modules to linear layers of this model (e.g. [query, value] for BERT)")


def test_a_missing_peft_is_one_line_naming_the_extra(tiny_config, write_config, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    tiny_config["model"]["lora"] = {"r": 4}
    path = str(write_config(tiny_config))
    for verb in ("check", "run"):
        assert main([verb, path]) == 2
        (line,) = _errors(capsys.readouterr().err)
        assert line == ("error: model.lora: LoRA adapters need the peft package, which is not installed; "
                        "pip install 'matryoshka-train[peft]' (or pip install peft)")
    assert not (tmp_path / "out").exists()


@needs_peft
def test_lora_refuses_what_would_reload_a_checkpoint(tiny_config, write_config, capsys):
    from conftest import problems_of

    tiny_config["model"]["lora"] = {"r": 4}
    raw = copy.deepcopy(tiny_config)
    raw["training"].update(load_best_model_at_end=True, eval_strategy="steps", eval_steps=2)
    assert any("reloading a checkpoint is not supported with model.lora" in p for p in problems_of(raw))
    frozen = copy.deepcopy(tiny_config)
    frozen["training"]["freeze_layers"] = 1
    assert any("freezing layers would freeze their adapters too" in p for p in problems_of(frozen))
    assert main(["run", str(write_config(tiny_config)), "--resume"]) == 2
    (line,) = _errors(capsys.readouterr().err)
    assert line.startswith("error: model.lora: --resume is not supported with model.lora yet")
