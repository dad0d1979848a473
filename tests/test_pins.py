"""Pinned hub inputs (issue #18, item 2): a hub dataset's ``revision`` and ``data_files`` and the
model's ``revision`` reach the loaders; configs/turkish.yaml pins the dataset revision its card names."""

from __future__ import annotations

import datasets
import pytest
import yaml
from conftest import REPO

from matryoshka_train.config import validate
from matryoshka_train.config.schema import ModelConfig, SourceConfig
from matryoshka_train.data import sources
from matryoshka_train.models import loading, references

TURKISH_REVISION = "1fe9d63490a69cb96da6b76f4bff1a43c48cbdee"


def test_hub_source_revision_and_data_files_reach_load_dataset(monkeypatch):
    seen = []

    def fake_load_dataset(*args, **kwargs):
        seen.append((args, kwargs))
        return datasets.Dataset.from_dict({"anchor": ["a"], "positive": ["b"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = SourceConfig(hub="org/data", subset="pairs", split="dev", revision="abc123",
                       data_files={"dev": "dev/*.parquet"})
    sources.read_source(src, "datasets.0.source")
    assert seen == [(("org/data", "pairs"), {"split": "dev", "revision": "abc123",
                                               "data_files": {"dev": "dev/*.parquet"}})]
    assert src.describe() == "hub:org/data/pairs@abc123[dev]"

    seen.clear()  # unpinned: nothing extra is passed (the library's defaults)
    sources.read_source(SourceConfig(hub="org/data"), "datasets.0.source")
    assert seen == [(("org/data", None), {"split": "train"})]


def test_revision_and_data_files_are_refused_for_local_files():
    with pytest.raises(ValueError, match="revision and data_files are for hub datasets"):
        SourceConfig(path=["x.jsonl"], revision="abc")


def test_model_revision_reaches_the_model_loader_and_not_the_other_models(monkeypatch):
    seen = []

    class FakeST:
        def __init__(self, *args, **kwargs):
            seen.append(kwargs)
            raise OSError("stop here")

    monkeypatch.setattr(loading, "SentenceTransformer", FakeST)
    with pytest.raises(Exception, match="stop here|org/model"):
        loading.load_model(ModelConfig(name_or_path="org/model", revision="v1.2"))
    assert seen and seen[0]["revision"] == "v1.2"

    teacher = references.reference_config(ModelConfig(name_or_path="org/model", revision="v1.2"), "org/teacher")
    assert teacher.revision is None


def test_turkish_config_pins_the_cards_dataset_revision():
    raw = yaml.safe_load((REPO / "configs" / "turkish.yaml").read_text(encoding="utf-8"))
    vodex = raw["datasets"][0]
    assert vodex["source"]["revision"] == TURKISH_REVISION
    assert vodex["eval"]["source"]["revision"] == TURKISH_REVISION
    validate(raw)
