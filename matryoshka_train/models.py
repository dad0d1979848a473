"""Building the SentenceTransformer a run trains: from the hub, a local directory, a model shipped
in a Python package, or a StaticEmbedding over a tokenizer; then pooling, normalisation and
sequence length as the config says. Also the one place Matryoshka dims are checked against the
model's embedding size.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

    from .config import MatryoshkaConfig, ModelConfig

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


def is_local(name_or_path: str) -> bool:
    return name_or_path.startswith(PACKAGE_PREFIX) or Path(name_or_path).exists()


def load_model(cfg: ModelConfig, device: str | None = None) -> SentenceTransformer:
    """Build the model the config describes. Hub ids need network access; local paths do not."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    path = resolve_model_path(cfg.name_or_path)
    if cfg.trust_remote_code:
        import logging

        logging.getLogger("matryoshka_train").warning(
            "trust_remote_code is on: code shipped with '%s' will run on this machine.", cfg.name_or_path
        )
    if cfg.type == "static":
        return _static_model(cfg, path, device)

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
    return model


# Where common encoder architectures keep their stack of transformer layers.
_LAYER_STACKS = ("encoder.layer", "encoder.layers", "layers", "transformer.layer", "layer")


def keep_layers(model: SentenceTransformer, layers: list[int]) -> None:
    """Layer reduction: keep only ``layers`` of the model's transformer stack, in place.

    A student made this way starts from the teacher's own weights (embeddings, the kept layers,
    pooling), which distils much faster than a random student. The model config's layer count is
    updated, so the saved model reloads with the reduced depth.
    """
    from torch import nn

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
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import AutoTokenizer

    if cfg.embedding_dim is None:
        raise ConfigError("a static model needs embedding_dim (e.g. 1024)", where="model.embedding_dim")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=_offline())
    except OSError as exc:
        raise ConfigError(_load_failure(cfg.name_or_path, exc), where="model.name_or_path") from None
    static = modules.StaticEmbedding(tokenizer, embedding_dim=cfg.embedding_dim)
    model = SentenceTransformer(modules=[static], device=device)
    if cfg.normalize:
        _set_normalize(model, True)
    return model


def _set_normalize(model: SentenceTransformer, on: bool) -> None:
    from sentence_transformers.sentence_transformer import modules

    has = [i for i, m in enumerate(model) if isinstance(m, modules.Normalize)]
    if on and not has:
        model.append(modules.Normalize())
    if not on:
        for i in reversed(has):
            del model[i]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _load_failure(name: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(name).exists() or name.startswith(PACKAGE_PREFIX):
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
        return default_dims(embedding_dim)
    if embedding_dim is not None and mcfg.dims[0] > embedding_dim:
        too_big = [d for d in mcfg.dims if d > embedding_dim]
        raise ConfigError(
            f"dims {too_big} exceed the model's embedding size {embedding_dim}; the largest dim may be {embedding_dim}",
            where="matryoshka.dims",
        )
    return list(mcfg.dims)
