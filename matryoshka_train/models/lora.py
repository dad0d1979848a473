"""LoRA adapters (``model.lora``) through peft, the optional ``peft`` extra.

:func:`add_lora` puts a fresh adapter into the model's transformer with peft's
``inject_adapter_in_model`` and leaves only the adapter trainable: every other weight of the
sentence-transformers model (embeddings, base layers, any Dense head) is frozen, so the base stays
exactly as loaded. We call peft directly rather than sentence-transformers' ``add_adapter``, which
goes through transformers' adapter integration and its minimum peft version; what we use of peft
(``LoraConfig``, injecting, the adapter's state dict) is its stable public API.

:func:`save_trained` writes the run's final model in two forms:

* ``<out>/``: the adapter merged into the base weights, saved as a plain sentence-transformers model
  (loads anywhere, with no peft);
* ``<out>/adapter/``: the adapter alone (``adapter_config.json`` naming the base model, and
  ``adapter_model.safetensors``), in the layout transformers and sentence-transformers'
  ``load_adapter`` read; :func:`load_adapter` puts it back onto a base model here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ..config.schema import LoraSettings

EXTRA = "peft"
ADAPTER_DIR = "adapter"
WEIGHTS = "adapter_model.safetensors"


def missing_peft_message() -> str | None:
    """``model.lora`` without peft installed: one line naming the extra."""
    if importlib.util.find_spec("peft") is not None:
        return None
    return f"LoRA adapters need the peft package, which is not installed; pip install 'matryoshka-train[{EXTRA}]' " \
           "(or pip install peft)"


def _transformer_model(model: Any) -> Any:
    auto_model = getattr(model[0], "auto_model", None) if len(model) else None
    if auto_model is None:
        raise ConfigError("LoRA needs a transformer model as the first module (a static model has none); "
                          "remove model.lora", where="model.lora")
    return auto_model


def add_lora(model: Any, cfg: LoraSettings) -> int:
    """Inject a LoRA adapter into ``model``'s transformer and freeze everything else; returns the
    number of trainable parameters."""
    missing = missing_peft_message()
    if missing:
        raise ConfigError(missing, where="model.lora")
    import peft  # optional extra: peft

    auto_model = _transformer_model(model)
    config = _lora_config(peft, cfg)
    try:
        peft.inject_adapter_in_model(config, auto_model)
    except (ValueError, TypeError) as exc:  # unknown target modules, or an argument peft refuses
        raise ConfigError(f"peft cannot add this adapter: {str(exc).splitlines()[0]}; set model.lora.target_modules "
                          "to linear layers of this model (e.g. [query, value] for BERT)", where="model.lora") from None
    trainable = 0
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name
        trainable += param.numel() if param.requires_grad else 0
    return trainable


def _lora_config(peft: Any, cfg: LoraSettings) -> Any:
    try:
        return peft.LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules, **cfg.kwargs
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"peft's LoraConfig refused these settings: {str(exc).splitlines()[0]}",
                          where="model.lora.kwargs") from None


def has_lora(model: Any) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def save_adapter(model: Any, directory: str | Path, base_model: str) -> Path:
    """The adapter alone: its config (naming ``base_model``) and weights."""
    import peft  # optional extra: peft
    from safetensors.torch import save_file  # comes with transformers; only LoRA runs write adapters

    auto_model = _transformer_model(model)
    config = auto_model.peft_config["default"]
    config.base_model_name_or_path = base_model
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    state = {k: v.detach().cpu().contiguous() for k, v in peft.get_peft_model_state_dict(auto_model).items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    return out


def load_adapter(model: Any, directory: str | Path) -> Any:
    """Put an adapter :func:`save_adapter` wrote back onto ``model`` (its base model); returns the model."""
    import peft  # optional extra: peft
    from safetensors.torch import load_file  # comes with transformers; only LoRA runs read adapters

    auto_model = _transformer_model(model)
    config = peft.LoraConfig.from_pretrained(str(directory))
    peft.inject_adapter_in_model(config, auto_model)
    result = peft.set_peft_model_state_dict(auto_model, load_file(str(Path(directory) / WEIGHTS)))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise ConfigError(f"the adapter in {directory} does not fit this model (missing {missing[0]})")
    return model


def merge(model: Any) -> Any:
    """Fold every LoRA update into its base layer and remove the adapter layers, in place: the model
    becomes a plain one computing the same embeddings."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # optional extra: peft

    auto_model = _transformer_model(model)
    for name, module in list(auto_model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(auto_model.get_submodule(parent_name), child, module.get_base_layer())
    for attribute in ("peft_config", "_hf_peft_config_loaded"):
        if attribute in vars(auto_model):
            delattr(auto_model, attribute)
    return model


def save_trained(model: Any, out: str | Path, base_model: str) -> None:
    """The run's final model: with a LoRA adapter, the adapter under ``<out>/adapter`` and the merged
    model in ``out`` (the in-memory model is merged too); otherwise ``model.save(out)``."""
    if has_lora(model):
        save_adapter(model, Path(out) / ADAPTER_DIR, base_model)
        merge(model)
    model.save(str(out))
