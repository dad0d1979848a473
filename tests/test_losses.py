"""Every registered loss trains through the real run path and changes the model's weights."""

from __future__ import annotations

import pytest
import torch

from matryoshka_train.config import validate
from matryoshka_train.losses import LOSSES, build_loss, matryoshka_weights
from matryoshka_train.training.entry import run

DATA_FOR = {
    "in_batch": ("triplets.jsonl", ["anchor", "positive", "negative"]),
    "triplet": ("triplets.jsonl", ["anchor", "positive", "negative"]),
    "pair_score": ("pairs.jsonl", ["sentence1", "sentence2", "score"]),
    "embedding": ("distill.jsonl", ["sentence", "label"]),
    "margin": ("margin.jsonl", ["anchor", "positive", "negative", "label"]),
}


def _weights(path) -> dict[str, torch.Tensor]:
    from sentence_transformers import SentenceTransformer

    return {k: v.clone() for k, v in SentenceTransformer(str(path)).state_dict().items()}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_trains_two_steps_and_changes_weights(name, tiny_config, tiny_model_dir, data_dir, tmp_path):
    spec = LOSSES[name]
    file, columns = DATA_FOR[spec.inputs]
    cfg = tiny_config
    cfg["datasets"] = [{"name": "d", "source": {"path": str(data_dir / file)}, "columns": columns}]
    cfg["loss"] = {"name": name}
    if name in ("GISTEmbedLoss", "CachedGISTEmbedLoss"):
        cfg["loss"]["guide_model"] = str(tiny_model_dir)
    if name.startswith("Cached"):
        cfg["loss"]["kwargs"] = {"mini_batch_size": 4}
    cfg["training"].update(max_steps=2, output_dir=str(tmp_path / name))
    cfg["evaluation"] = {"evaluators": []}

    results = run(validate(cfg), echo=lambda _: None)

    assert results["train"]["steps"] == 2
    assert results["train"]["final_loss"] is not None
    before, after = _weights(tiny_model_dir), _weights(tmp_path / name)
    extra = set(after) - set(before)  # the learned rotation (matryoshka.rotation: auto) where the loss allows it
    assert set(before) <= set(after) and all(k.endswith("linear.weight") for k in extra), extra
    assert bool(extra) == (results["rotation"]["enabled"] is True)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, f"{name} left every weight unchanged"


def test_mean_reduction_is_sum_divided_by_number_of_dims(tiny_model_dir, data_dir):
    from datasets import load_dataset
    from sentence_transformers import SentenceTransformer

    from matryoshka_train.config import LossConfig, MatryoshkaConfig

    model = SentenceTransformer(str(tiny_model_dir))
    model.eval()  # no dropout: both losses see the same embeddings
    rows = load_dataset("json", data_files=str(data_dir / "triplets.jsonl"), split="train").select(range(8))
    features = [model.tokenize(list(rows[c])) for c in ("anchor", "positive", "negative")]
    dims = [32, 16, 8]
    values = {}
    for reduction in ("sum", "mean"):
        mcfg = MatryoshkaConfig(dims=dims, reduction=reduction)
        loss = build_loss(model, LossConfig(name="mnrl"), mcfg, dims)
        with torch.no_grad():
            values[reduction] = sum(loss(features, None).values()).item()  # per-dim terms add up to the loss
    assert values["mean"] == pytest.approx(values["sum"] / len(dims), rel=1e-6)
    assert matryoshka_weights(MatryoshkaConfig(dims=dims, weights=[3, 2, 1], reduction="mean"), dims) == [
        1.0,
        2 / 3,
        1 / 3,
    ]
