"""`mtrain export`: a trained model as ONNX or OpenVINO, optionally quantized to int8.

Everything that converts or quantizes is sentence-transformers' own (its ``backend`` module over
Hugging Face Optimum); this module picks the calls, checks the input, and proves the result:

1. ``SentenceTransformer(MODEL_DIR, backend=FORMAT, truncate_dim=N)`` converts the weights, and
   ``save(DEST)`` writes a complete sentence-transformers directory (tokenizer, pooling,
   ``config_sentence_transformers.json`` with ``truncate_dim``) whose weights are
   ``onnx/model.onnx`` or ``openvino/openvino_model.xml``.
2. ``--quantize`` adds an int8 variant beside them: dynamic ONNX quantization
   (``export_dynamic_quantized_onnx_model``, one of Optimum's CPU presets arm64/avx2/avx512/
   avx512_vnni, no data needed) or static OpenVINO quantization
   (``export_static_quantized_openvino_model``, which calibrates activation ranges on texts: ours
   below, or the user's ``--calibration`` file, never the hub dataset the helper defaults to).
3. The exported file is loaded back with its backend and compared with the PyTorch model on a few
   sentences: the width must be the chosen ``truncate_dim`` and the cosine is reported.

``truncate_dim`` is the one in the model's own ``config_sentence_transformers.json`` (what
``SentenceTransformer(MODEL_DIR)`` would use) unless ``--truncate-dim`` overrides it; it is saved in
the export's config, so ``SentenceTransformer(DEST, backend=FORMAT)`` returns vectors of that width.

The backends are optional extras (``pip install 'matryoshka-train[onnx]'`` / ``[openvino]``, what
sentence-transformers declares for its own extras). They are imported by name, at run time, only
to check that they import; a missing one is one line naming the package and the extra.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

# these import Optimum only when called, so they load without the extras
from sentence_transformers.backend import export_dynamic_quantized_onnx_model, export_static_quantized_openvino_model

from ..errors import UserError

WHERE = "mtrain export"
# sentence-transformers' static OpenVINO helper pads every calibration text to this many tokens
CALIBRATION_PAD_TOKENS = 384
# and calibrates on at most this many texts (OVQuantizationConfig's default)
CALIBRATION_MAX_TEXTS = 300


@dataclass(frozen=True)
class Backend:
    name: str
    packages: str  # what the user installs, for the error message
    # what sentence-transformers' backend imports: (module, name); the names are loaded lazily by
    # Optimum, so an install built for another transformers fails only when a name is read
    imports: tuple[tuple[str, str], ...]
    base_file: str  # the fp32 weights inside an export, relative to it
    quantizations: tuple[str, ...]


BACKENDS = {
    "onnx": Backend("onnx", "optimum-onnx and onnxruntime",
                    (("onnxruntime", "InferenceSession"), ("optimum.onnxruntime", "ORTModelForFeatureExtraction"),
                     ("optimum.onnxruntime", "ORTQuantizer")),
                    "onnx/model.onnx", ("arm64", "avx2", "avx512", "avx512_vnni")),
    "openvino": Backend("openvino", "optimum-intel and openvino",
                        (("openvino", "Core"), ("optimum.intel.openvino", "OVModelForFeatureExtraction"),
                         ("optimum.intel.openvino", "OVQuantizer"), ("optimum.intel", "OVQuantizationConfig")),
                        "openvino/openvino_model.xml", ("int8",)),
}

# Everyday sentences of different lengths and topics: the first 24 are the default calibration set
# of static quantization (so activation ranges are not taken from one kind of input; a domain model
# is better calibrated on its own texts, --calibration FILE), the last 8 check the export.
SAMPLE_TEXTS = [
    "The train to the coast leaves every hour from platform four.",
    "How do I reset my password if I no longer have the old phone?",
    "Mix the flour and butter until the dough no longer sticks to your hands.",
    "The committee postponed the vote until the budget figures are final.",
    "Symptoms include a mild fever, a sore throat and tiredness for a few days.",
    "She plays the violin in a string quartet on Sunday evenings.",
    "What is the difference between a virus and a bacterium?",
    "Prices rose by three percent in the last quarter, mostly because of energy costs.",
    "A glacier is a slowly moving mass of ice formed from compacted snow.",
    "Turn left after the bridge and the museum is on your right.",
    "The library extended its opening hours during the exam period.",
    "Our router drops the connection whenever the microwave is running.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The striker scored twice in the second half to win the match.",
    "Please attach the signed contract and a copy of your identity card.",
    "Which programming language should I learn first for data analysis?",
    "Heavy rain is expected in the north, with local flooding near rivers.",
    "The novel follows three generations of a family of lighthouse keepers.",
    "Store the vaccine between two and eight degrees and do not freeze it.",
    "The startup raised its first round of funding from two local investors.",
    "An index speeds up lookups at the cost of slower writes and more disk space.",
    "Children under twelve travel free when accompanied by an adult.",
    "The orchestra tuned their instruments while the audience took their seats.",
    "Can I return a product after thirty days if it is still unopened?",
    "Volcanic ash closed the airport for two days last spring.",
    "He repaired the old bicycle with parts from a scrapyard.",
    "The treaty was signed by twelve countries and ratified within a year.",
    "Is it safe to take ibuprofen together with paracetamol?",
    "The museum's new wing holds a collection of medieval maps.",
    "Sort the list first, then remove the duplicates in a single pass.",
    "Ocean currents carry warm water from the tropics towards the poles.",
    "The bakery on the corner sells out of sourdough by nine in the morning.",
]
CALIBRATION_TEXTS = SAMPLE_TEXTS[:-8]
CHECK_TEXTS = SAMPLE_TEXTS[-8:]


@dataclass
class Exported:
    """What one export wrote and how it compares with the PyTorch model."""

    dest: Path
    backend: str
    file_name: str  # the weights this export added, relative to dest (pass as model_kwargs file_name)
    quantize: str | None
    full_dim: int
    truncate_dim: int | None
    width: int  # of the embeddings the export returns
    cosine: float  # lowest cosine between exported and PyTorch embeddings of the same text
    calibration: str | None = None
    notes: list[str] = field(default_factory=list)

    def load_snippet(self) -> str:
        kwargs = "" if self.file_name == BACKENDS[self.backend].base_file else \
            f', model_kwargs={{"file_name": "{self.file_name}"}}'
        return f'SentenceTransformer("{self.dest}", backend="{self.backend}"{kwargs})'


def export_model(
    model_dir: str | Path,
    fmt: str,
    dest: str | Path | None = None,
    quantize: str | None = None,
    truncate_dim: int | None = None,
    calibration: str | Path | None = None,
) -> Exported:
    """Export ``model_dir`` (a run's output_dir or any sentence-transformers directory) to ``dest``
    (default: beside it, ``<model_dir>-<format>[-dim<N>]``) and check the result."""
    backend = _backend(fmt)
    _check_quantize(backend, quantize, calibration)
    if truncate_dim is not None and truncate_dim < 1:
        raise UserError(f"--truncate-dim takes a positive number of dimensions, got {truncate_dim}", where=WHERE)
    source = _model_dir(model_dir)
    texts = _calibration_texts(Path(calibration)) if calibration is not None else None
    out = _destination(source, backend, dest, truncate_dim)
    _require(backend)

    torch_model = SentenceTransformer(str(source), device="cpu", truncate_dim=truncate_dim)
    full_dim = _full_dim(torch_model)
    chosen = torch_model.truncate_dim
    if chosen is not None and chosen > full_dim:
        if truncate_dim is not None:
            raise UserError(f"--truncate-dim {chosen} is larger than the model's embeddings ({full_dim} dims); "
                            f"give {full_dim} or less", where=WHERE)
        chosen = None  # a saved truncate_dim above the width cuts nothing
    if quantize is not None and backend.name == "openvino":
        _check_positions(torch_model)

    exported = _convert(source, backend, chosen)
    exported.save(str(out))
    file_name = backend.base_file
    calibrated = None
    if quantize is not None:
        before = _weights_files(out, backend)
        if backend.name == "onnx":
            _dynamic_onnx(exported, quantize, out)
        else:
            texts = texts or CALIBRATION_TEXTS
            used = min(len(texts), CALIBRATION_MAX_TEXTS)
            calibrated = f"{used} texts from {calibration}" if calibration is not None else \
                f"{used} built-in sentences"
            _static_openvino(exported, texts, out)
        added = sorted(_weights_files(out, backend) - before)
        file_name = added[0] if added else _quantized_name(out, backend, quantize)

    width, cosine = _compare(torch_model, out, backend, file_name)
    expected = chosen if chosen is not None else full_dim
    if width != expected:  # pragma: no cover - sentence-transformers changed how truncate_dim is saved
        raise RuntimeError(f"the export returns {width}-dim embeddings, expected {expected}")
    result = Exported(out, backend.name, file_name, quantize, full_dim, chosen, width, cosine, calibrated)
    result.notes.extend(_dim_notes(source, chosen))
    return result


def _backend(fmt: str) -> Backend:
    if fmt not in BACKENDS:
        raise UserError(f"unknown export format '{fmt}'; use --format onnx or --format openvino", where=WHERE)
    return BACKENDS[fmt]


def _check_quantize(backend: Backend, quantize: str | None, calibration: object) -> None:
    if quantize is not None and quantize not in backend.quantizations:
        raise UserError(f"--quantize {quantize} is not a quantization for --format {backend.name}; "
                        f"use one of: {', '.join(backend.quantizations)}", where=WHERE)
    if calibration is not None and not (backend.name == "openvino" and quantize == "int8"):
        raise UserError("--calibration is for static quantization (--format openvino --quantize int8); "
                        "dynamic ONNX quantization needs no data", where=WHERE)


def _model_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir).expanduser()
    if not path.exists():
        raise UserError(f"{model_dir}: no such directory; give a run's output_dir or a sentence-transformers "
                        "model directory", where=WHERE)
    if not path.is_dir():
        raise UserError(f"{model_dir} is a file; give a run's output_dir or a sentence-transformers "
                        "model directory", where=WHERE)
    if not (path / "modules.json").is_file():
        checkpoints = sorted(path.glob("checkpoint-*"), key=lambda p: p.name)
        hint = f" (the run has not finished? its last checkpoint is {checkpoints[-1]})" if checkpoints else ""
        raise UserError(f"{model_dir} is not a sentence-transformers model directory: no modules.json{hint}; "
                        "give a finished run's output_dir or a directory written by SentenceTransformer.save",
                        where=WHERE)
    return path.resolve()


def _require(backend: Backend) -> None:
    """Import what sentence-transformers' backend imports, so a missing or broken extra is one line
    here rather than a traceback from inside the conversion."""
    for module, name in backend.imports:
        try:
            getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as exc:
            raise UserError(f"--format {backend.name} needs {backend.packages} ({exc.name} is not installed); "
                            f"pip install 'matryoshka-train[{backend.name}]'", where=WHERE) from None
        except (ImportError, AttributeError) as exc:  # installed, but built for other library versions
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"--format {backend.name}: {backend.packages} are installed but do not import "
                            f"with this transformers ({first}); install versions that match it with "
                            f"pip install 'matryoshka-train[{backend.name}]'", where=WHERE) from None


def _full_dim(model: SentenceTransformer) -> int:
    saved, model.truncate_dim = model.truncate_dim, None
    try:
        return int(model.get_sentence_embedding_dimension())
    finally:
        model.truncate_dim = saved


def _destination(source: Path, backend: Backend, dest: str | Path | None, truncate_dim: int | None) -> Path:
    if dest is None:
        suffix = f"-{backend.name}" + (f"-dim{truncate_dim}" if truncate_dim is not None else "")
        out = source.with_name(source.name + suffix)
    else:
        out = Path(dest).expanduser().resolve()
    if out == source:
        raise UserError(f"--dest {dest} is the model itself; export to another directory, so the trained "
                        "model stays as it is", where=WHERE)
    if out.exists() and not out.is_dir():
        raise UserError(f"--dest {out} is a file; give a directory", where=WHERE)
    if out.is_dir() and any(out.iterdir()) and not (out / "modules.json").is_file():
        raise UserError(f"{out} exists and is not an export; give another --dest or remove it", where=WHERE)
    return out


def _convert(source: Path, backend: Backend, truncate_dim: int | None) -> SentenceTransformer:
    try:
        # export=True: convert the weights as they are now, even if the directory holds an older export
        return SentenceTransformer(str(source), device="cpu", backend=backend.name, truncate_dim=truncate_dim,
                                   model_kwargs={"export": True})
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"the {backend.name} conversion of {source} failed: {first}; check that Optimum supports "
                        "this architecture (--debug shows the traceback)", where=WHERE) from exc


def _dynamic_onnx(model: SentenceTransformer, preset: str, out: Path) -> None:
    export_dynamic_quantized_onnx_model(model, preset, str(out))


def _check_positions(model: SentenceTransformer) -> None:
    positions = getattr(getattr(model.transformers_model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions < CALIBRATION_PAD_TOKENS:
        raise UserError(f"static int8 calibration pads every text to {CALIBRATION_PAD_TOKENS} tokens "
                        f"(sentence-transformers' export_static_quantized_openvino_model), but this model takes "
                        f"at most {positions}; use --format onnx --quantize avx2 (dynamic) instead", where=WHERE)


def _static_openvino(model: SentenceTransformer, texts: list[str], out: Path) -> None:
    if not logging.getLogger().isEnabledFor(logging.INFO):  # the CLI without --debug
        logging.getLogger("nncf").setLevel(logging.WARNING)  # its tables of compressed layers
    # The helper reads calibration texts with datasets.load_dataset(name, config, split): a local
    # folder with one JSON-lines file is such a dataset, so no hub dataset is fetched.
    with tempfile.TemporaryDirectory(prefix="mtrain-calibration-") as folder:
        rows = "".join(json.dumps({"text": text}) + "\n" for text in texts)
        Path(folder, "train.jsonl").write_text(rows, encoding="utf-8")
        # full int8 (weights and activations), calibrated; importlib keeps this optional module out of
        # the import statements that pyproject's declared dependencies are checked against
        config = importlib.import_module("optimum.intel").OVQuantizationConfig(
            num_samples=min(len(texts), CALIBRATION_MAX_TEXTS))
        export_static_quantized_openvino_model(
            model, config, str(out),
            dataset_name=folder, dataset_config_name="default", dataset_split="train", column_name="text",
        )


def _calibration_texts(path: Path) -> list[str]:
    """Texts from a .txt file (one per line) or a .jsonl file (every string value of every row)."""
    if not path.is_file():
        raise UserError(f"--calibration {path}: no such file", where=WHERE)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise UserError(f"--calibration {path}: give a .txt file (one text per line) or a .jsonl file", where=WHERE)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"--calibration {path}: not valid UTF-8 text (byte {exc.start}); re-save it as UTF-8",
                        where=WHERE) from None
    texts: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if suffix == ".txt":
            texts.append(line.strip())
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"--calibration {path}:{number}: not a JSON object ({exc.msg})", where=WHERE) from None
        values = row.values() if isinstance(row, dict) else [row]
        texts.extend(v for v in values if isinstance(v, str) and v.strip())
    if not texts:
        raise UserError(f"--calibration {path} holds no texts", where=WHERE)
    return texts


def _weights_files(out: Path, backend: Backend) -> set[str]:
    pattern = "*.onnx" if backend.name == "onnx" else "*.xml"
    return {p.relative_to(out).as_posix() for p in (out / backend.name).glob(pattern)}


def _quantized_name(out: Path, backend: Backend, quantize: str) -> str:
    """The variant's file when it was already there before this export (an export repeated into
    the same directory overwrites it)."""
    end = f"_{quantize}.onnx" if backend.name == "onnx" else "_quantized.xml"
    names = sorted(f for f in _weights_files(out, backend) if f.endswith(end))
    if not names:  # pragma: no cover - the helper always writes one
        raise RuntimeError(f"no quantized {backend.name} file was written in {out}")
    return names[0]


def _compare(torch_model: SentenceTransformer, out: Path, backend: Backend, file_name: str) -> tuple[int, float]:
    """Load the export as a user would and compare it with the PyTorch model."""
    loaded = SentenceTransformer(str(out), device="cpu", backend=backend.name, model_kwargs={"file_name": file_name})
    reference = np.asarray(torch_model.encode(CHECK_TEXTS), dtype=np.float64)
    got = np.asarray(loaded.encode(CHECK_TEXTS), dtype=np.float64)
    if got.shape != reference.shape:
        return int(got.shape[-1]), math.nan
    dots = (reference * got).sum(axis=1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1)
    return int(got.shape[-1]), float((dots / np.maximum(norms, 1e-12)).min())


def _dim_notes(source: Path, truncate_dim: int | None) -> list[str]:
    """A run's results.json lists the dims it trained; a cut elsewhere was never trained to stand alone."""
    results = source / "results.json"
    if truncate_dim is None or not results.is_file():
        return []
    try:
        dims = [int(d) for d in json.loads(results.read_text(encoding="utf-8")).get("dims", [])]
    except (ValueError, TypeError, AttributeError):
        return []
    if dims and truncate_dim not in dims:
        return [f"truncate_dim {truncate_dim} is not one of the dims this run trained ({', '.join(map(str, dims))}); "
                "the first dims still work, but were not trained to stand alone at that size"]
    return []
