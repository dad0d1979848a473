"""Building the SentenceTransformer a run trains: from the hub, a local directory, a model shipped
in a Python package, or a StaticEmbedding over a tokenizer; then pooling, normalisation, sequence
length, prompts and a LoRA adapter (:mod:`.lora`) as the config says. Also the one place
Matryoshka dims are checked against the model's embedding size.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import modules
from torch import nn
from transformers import AutoTokenizer

from ..errors import ConfigError
from .lora import add_lora

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

    from ..config.schema import MatryoshkaConfig, ModelConfig

PACKAGE_PREFIX = "package:"


def resolve_model_path(name_or_path: str) -> str:
    """Turn 'package:<module>' into the directory the module ships (its MODEL_DIR); pass others on."""
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return name_or_path
    module_name = name_or_path[len(PACKAGE_PREFIX) :]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pip_name = module_name.replace("_", "-")
        raise ConfigError(
            f"Python package '{module_name}' is not installed; run: pip install {pip_name}",
            where="model.name_or_path",
        ) from None
    model_dir = getattr(module, "MODEL_DIR", None)
    if model_dir is None or not Path(model_dir).is_dir():
        raise ConfigError(f"package '{module_name}' exposes no MODEL_DIR directory", where="model.name_or_path")
    return str(model_dir)


def looks_like_path(name: str) -> bool:
    """'./models/x', '/data/m', '~/m', 'a/b/c' are paths; 'org/name' and 'name' may be hub ids."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or name.count("/") >= 2


def is_local(name_or_path: str) -> bool:
    """Local models are checked offline; a missing local path is reported, not taken for a hub id."""
    return name_or_path.startswith(PACKAGE_PREFIX) or looks_like_path(name_or_path) or _exists(name_or_path)


def load_model(cfg: ModelConfig, device: str | None = None) -> SentenceTransformer:
    """Build the model the config describes. Hub ids need network access; local paths do not."""

    path = resolve_model_path(cfg.name_or_path)
    if looks_like_path(path) and not Path(path).expanduser().exists():
        raise ConfigError(
            f"no model directory at {path} (relative paths start at {Path.cwd()}); fix the path, "
            "or give a hub id such as sentence-transformers/all-MiniLM-L6-v2",
            where="model.name_or_path",
        )
    if cfg.trust_remote_code:
        logging.getLogger("matryoshka_train").warning(
            "trust_remote_code is on: code shipped with '%s' will run on this machine.", cfg.name_or_path
        )
    if cfg.type == "static":
        model = _static_model(cfg, path, device)
        apply_prompts(model, cfg)
        if cfg.lora is not None:
            add_lora(model, cfg.lora)
        return model

    model_kwargs = {}
    if cfg.dtype != "float32":
        model_kwargs["dtype"] = cfg.dtype
    if cfg.attn_implementation:
        model_kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        model = SentenceTransformer(
            path,
            device=device,
            trust_remote_code=cfg.trust_remote_code,
            revision=cfg.revision,
            model_kwargs=model_kwargs or None,
            local_files_only=_offline(),
        )
    except OSError as exc:
        raise ConfigError(_load_failure(cfg.name_or_path, exc), where="model.name_or_path") from None

    if cfg.max_seq_length is not None:
        model.max_seq_length = cfg.max_seq_length
    if cfg.pooling is not None:
        for i, module in enumerate(model):
            if isinstance(module, modules.Pooling):
                model[i] = modules.Pooling(module.get_embedding_dimension(), pooling_mode=cfg.pooling).to(model.device)
                break
        else:
            raise ConfigError("the model has no Pooling module to override", where="model.pooling")
    if cfg.normalize is not None:
        _set_normalize(model, cfg.normalize)
    if cfg.layers is not None:
        keep_layers(model, cfg.layers)
    apply_prompts(model, cfg)
    if cfg.lora is not None:
        add_lora(model, cfg.lora)
    return model


def apply_prompts(model: SentenceTransformer, cfg: ModelConfig) -> None:
    """``model.prompts`` replaces the prompts the model shipped with (they are saved with it, in
    config_sentence_transformers.json); ``default_prompt_name`` picks the one plain encode uses."""
    if cfg.prompts is not None:
        model.prompts = dict(cfg.prompts)
    if cfg.default_prompt_name is not None:
        model.default_prompt_name = cfg.default_prompt_name


# Where common encoder architectures keep their stack of transformer layers.
_LAYER_STACKS = ("encoder.layer", "encoder.layers", "layers", "transformer.layer", "layer")


def keep_layers(model: SentenceTransformer, layers: list[int]) -> None:
    """Layer reduction: keep only ``layers`` of the model's transformer stack, in place.

    A student made this way starts from the teacher's own weights (embeddings, the kept layers,
    pooling), which distils much faster than a random student. The model config's layer count is
    updated, so the saved model reloads with the reduced depth.
    """

    auto = getattr(model[0], "auto_model", None)
    if auto is None:
        raise ConfigError("layer reduction needs a transformer model; this one has none", where="model.layers")
    for dotted in _LAYER_STACKS:
        owner, name = auto, dotted
        *parents, name = dotted.split(".")
        for part in parents:
            owner = getattr(owner, part, None)
        stack = getattr(owner, name, None) if owner is not None else None
        if isinstance(stack, nn.ModuleList) and len(stack) == getattr(auto.config, "num_hidden_layers", -1):
            break
    else:
        raise ConfigError(f"cannot find the layer stack of {type(auto).__name__} to reduce", where="model.layers")
    missing = [i for i in layers if i >= len(stack)]
    if missing:
        raise ConfigError(
            f"layers {missing} do not exist: the model has {len(stack)} layers, numbered 0 to {len(stack) - 1}",
            where="model.layers",
        )
    kept = nn.ModuleList([stack[i] for i in layers])
    for new_index, layer in enumerate(kept):
        for sub in layer.modules():  # attention caches are indexed by layer
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new_index
    setattr(owner, name, kept)
    auto.config.num_hidden_layers = len(layers)


def _static_model(cfg: ModelConfig, path: str, device: str | None) -> SentenceTransformer:
    """A StaticEmbedding (an EmbeddingBag over a tokenizer's vocabulary) with random initial weights."""

    if cfg.embedding_dim is None:
        raise ConfigError("a static model needs embedding_dim (e.g. 1024)", where="model.embedding_dim")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, local_files_only=_offline())
    except OSError as exc:
        raise ConfigError(_load_failure(cfg.name_or_path, exc), where="model.name_or_path") from None
    static = modules.StaticEmbedding(tokenizer, embedding_dim=cfg.embedding_dim)
    model = SentenceTransformer(modules=[static], device=device)
    if cfg.normalize:
        _set_normalize(model, True)
    return model


def _set_normalize(model: SentenceTransformer, on: bool) -> None:
    has = [i for i, m in enumerate(model) if isinstance(m, modules.Normalize)]
    if on and not has:
        model.append(modules.Normalize())
    if not on:
        for i in reversed(has):
            del model[i]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _exists(name: str) -> bool:
    """Whether ``name`` is a path that exists (a name too long for a path, or otherwise unusable as one, is not)."""
    try:
        return Path(name).exists()
    except (OSError, ValueError):
        return False


def _load_failure(name: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if _exists(name) or name.startswith(PACKAGE_PREFIX):
        return f"cannot load the model at '{name}': {first}"
    return (
        f"cannot load '{name}' from the hub (no network, or no such model): {first}. "
        "Check the id, your connection, or point name_or_path at a local directory"
    )


def default_dims(full: int) -> list[int]:
    """Full size, then halvings down to 32 (or to the full size when it is below 32)."""
    dims = [full]
    while dims[-1] // 2 >= 32 and dims[-1] % 2 == 0:
        dims.append(dims[-1] // 2)
    return dims


def resolve_dims(mcfg: MatryoshkaConfig, embedding_dim: int | None) -> list[int]:
    """The Matryoshka dims of this run, checked against the model's embedding size."""
    if mcfg.dims is None:
        if embedding_dim is None:
            raise ConfigError("the model's embedding size is unknown: list the dims", where="matryoshka.dims")
        dims = default_dims(embedding_dim)
        problem = weights_problem(mcfg, dims)
        if problem:
            raise ConfigError(problem, where="matryoshka.weights")
        return dims
    if embedding_dim is not None and mcfg.dims[0] > embedding_dim:
        too_big = [d for d in mcfg.dims if d > embedding_dim]
        raise ConfigError(
            f"dims {too_big} exceed the model's embedding size {embedding_dim}; the largest dim may be {embedding_dim}",
            where="matryoshka.dims",
        )
    return list(mcfg.dims)


# --------------------------------------------------------------------------------------------
# levers: which parameters train, and how fast

_LAYER = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def layer_index(parameter_name: str) -> int | None:
    """Transformer layer number of a parameter (BERT, RoBERTa, XLM-R, GPT-style names), or None."""
    match = _LAYER.search(parameter_name)
    return int(match.group(1)) if match else None


def is_embedding(parameter_name: str) -> bool:
    return ".embeddings." in parameter_name or ".embed_tokens." in parameter_name or "wte" in parameter_name


def freeze(model: SentenceTransformer, embeddings: bool, first_layers: int) -> int:
    """Turn off gradients for the embedding layer and/or the first N layers; returns how many
    parameters were frozen (0 when asked for nothing)."""
    frozen = 0
    for name, param in model.named_parameters():
        layer = layer_index(name)
        if (embeddings and is_embedding(name)) or (layer is not None and layer < first_layers):
            param.requires_grad_(False)
            frozen += 1
    if (embeddings or first_layers) and frozen == 0:
        raise ConfigError("found no embedding or layer "
                          "parameters to freeze in this model", where="training.freeze_layers")
    return frozen


def has_layers(model: SentenceTransformer) -> bool:
    """Whether the model has numbered transformer layers (what layer-wise rates and freezing address)."""
    return any(layer_index(name) is not None for name, _ in model.named_parameters())


def layerwise_learning_rates(model: SentenceTransformer, base_lr: float, decay: float) -> dict[str, float]:
    """Regex -> learning rate for sentence-transformers' ``learning_rate_mapping``: the top layer
    trains at ``base_lr``, each layer below at ``decay`` times the one above, embeddings lowest."""
    names = [n for n, _ in model.named_parameters()]
    layers = sorted({i for n in names if (i := layer_index(n)) is not None})
    if not layers:
        raise ConfigError("layer-wise decay needs a layered transformer model", where="training.layerwise_lr_decay")
    top = layers[-1]
    mapping = {rf"\.(?:layer|layers|h|block|blocks)\.{i}\.": base_lr * decay ** (top - i) for i in layers}
    if any(is_embedding(n) for n in names):
        mapping[r"\.embeddings\.|\.embed_tokens\.|wte"] = base_lr * decay ** (top + 1)
    return mapping


def weights_problem(mcfg: MatryoshkaConfig, dims: list[int]) -> str | None:
    """Weights given without dims are matched against the default dims, known only now."""
    if isinstance(mcfg.weights, list) and len(mcfg.weights) != len(dims):
        return (f"weights has {len(mcfg.weights)} entries but the dims are {dims} ({len(dims)}); "
                "give one weight per dim, or list matryoshka.dims too")
    return None
