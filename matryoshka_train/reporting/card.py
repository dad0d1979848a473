"""The model card (README.md) a run writes with its model: sentence-transformers' own card, made right.

sentence-transformers fills its card from what its trainer saw. For our runs that is wrong in
places, so before the model is saved :func:`fill_card_data` corrects the card data it renders from:

* the base model (the card would say "Unknown" for a local directory or ``package:`` model): the
  Hub id the caller resolved, else the card names the directory;
* the training datasets: named by hub id or file name (the trainer sees "json"), described by the
  columns the user trains on (not our ``__tok__…`` pre-tokenized ids);
* the losses: sentence-transformers' names (``loss:MatryoshkaLoss``), not our subclasses';
* the evaluation: the final per-dim float32 results (the trainer's copy is overwritten by each dim
  and precision in turn), one entry per evaluator and dim, so every ``model-index`` entry is
  told apart by its dataset (``quickstart-heldout_dim64``);
* ``card:`` of the config (title, license, language, tags) and ``hub.repo_id`` for the usage snippet.

After the card is written, :func:`finish_front_matter` puts what only the whole run knows into its
YAML front matter: ``co2_eq_emissions`` from our codecarbon figures (grams, as the Hub expects), and
the config's base model, datasets, license, language and tags again (a multi-stage run's final card
is the last stage's, whose base model is the previous stage). The per-dim section on top of the body
is :func:`matryoshka_train.reporting.report.add_model_card_section`.

Nothing here loads a model or reaches the network: the card data object is duck-typed
(``SentenceTransformerModelCardData``) and its lookups are switched off (``local_files_only``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..config.schema import RunConfig, SourceConfig

# what sentence-transformers writes when it knows no base model
UNKNOWN_BASE_LINE = "<!-- - **Base model:** [Unknown](https://huggingface.co/unknown) -->"
# trainer log columns that are losses (kept); the others are evaluator values (dropped, see _clean_logs)
_LOG_KEEP = ("Epoch", "Step", "Training Loss", "Validation Loss")


def dataset_entry(source: SourceConfig) -> dict[str, str]:
    """How a card names one data source: a hub dataset by its id (linked), files by their names."""
    if source.hub:
        entry = {"name": source.hub + (f"/{source.subset}" if source.subset else ""), "id": source.hub}
        if source.revision:
            entry["revision"] = source.revision
        return entry
    return {"name": ", ".join(Path(p).name for p in source.path or [])}


def hub_datasets(config: RunConfig) -> list[str]:
    """The hub dataset ids a config trains on (the card's ``datasets:`` metadata)."""
    ids = []
    for dcfg in config.datasets:
        for source in (dcfg.source, dcfg.eval.source if dcfg.eval is not None else None):
            if source is not None and source.hub and source.hub not in ids:
                ids.append(source.hub)
    return ids


def model_name(config: RunConfig, base_label: str) -> str:
    return config.card.model_name or f"SentenceTransformer based on {base_label}"


def fill_card_data(
    card_data: Any,
    config: RunConfig,
    base_hub_id: str | None,
    base_label: str,
    train_sets: Mapping[str, Any],
    eval_sets: Mapping[str, Any],
    losses: Mapping[str, Any],
    evaluators: Mapping[tuple[str, int], Any],
    after: Mapping[str, Any],
    primary: Mapping[str, str],
) -> None:
    """Correct ``card_data`` (a model's ``model_card_data``) before the model is saved.

    ``train_sets`` / ``eval_sets``: each dataset's rows by dataset name, with the user's columns
    only; ``losses``: each dataset's loss; ``evaluators``: the sentence-transformers evaluator of each
    (evaluator name, dim); ``after``: the final float32 results ``{evaluator: {dim: {metric: value}}}``;
    ``primary``: each evaluator's primary metric."""
    card_data.local_files_only = True  # nothing below may reach the network (offline runs, fixed output)
    if base_hub_id is not None:
        card_data.base_model = base_hub_id
        if base_hub_id == config.model.name_or_path and config.model.revision:
            card_data.base_model_revision = config.model.revision
    card_data.model_name = model_name(config, base_hub_id or base_label)
    if config.card.license:
        card_data.license = config.card.license
    if config.card.language:
        card_data.language = list(config.card.language)
    card_data.add_tags(list(config.card.tags))
    repo = config.hub.repo_id
    if repo and "/" in repo:
        card_data.model_id = repo
    sources = {d.name: d for d in config.datasets}
    card_data.train_datasets = _describe(card_data, train_sets, losses, {n: d.source for n, d in sources.items()},
                                         "train")
    card_data.tags = [t for t in card_data.tags if not t.startswith("dataset_size:")]
    card_data.add_tags(f"dataset_size:{sum(len(ds) for ds in train_sets.values())}")
    if card_data.eval_datasets and eval_sets:
        eval_sources = {
            n: d.eval.source if d.eval is not None and d.eval.source is not None else d.source
            for n, d in sources.items()
        }
        card_data.eval_datasets = _describe(card_data, eval_sets, losses, eval_sources, "eval")
    card_data.datasets = hub_datasets(config)
    _standard_loss_names(card_data, losses)
    card_data.eval_results_dict = per_dim_results(evaluators, after, primary)
    card_data.training_logs = _clean_logs(card_data.training_logs)


def _describe(card_data: Any, sets: Mapping[str, Any], losses: Mapping[str, Any],
              sources: Mapping[str, SourceConfig], split: str) -> list[dict[str, Any]]:
    """sentence-transformers' own dataset description (size, columns, statistics, examples), under
    the name the config gives the source."""
    out = []
    for name, dataset in sets.items():
        info: dict[str, Any] = dataset_entry(sources[name]) if name in sources else {"name": name}
        info["split"] = split
        out.append(card_data.compute_dataset_metrics(dataset, info, losses.get(name)))
    return out


def _standard_name(loss: Any) -> tuple[str, str] | None:
    """(class name, full name) of the sentence-transformers loss ``loss``'s class is built on; None
    when it is built on none (our own terms, e.g. AnchoredLoss)."""
    for cls in type(loss).__mro__:
        if cls.__module__.startswith("sentence_transformers."):
            return cls.__name__, f"{cls.__module__}.{cls.__qualname__}"
    return None


def _standard_loss_names(card_data: Any, losses: Mapping[str, Any]) -> None:
    """Tags, citations and dataset descriptions name sentence-transformers' losses, not ours."""
    renames: dict[str, str | None] = {}
    for loss in _all_losses(losses.values()):
        own = type(loss).__name__
        standard = _standard_name(loss)
        if standard is None:
            renames[own] = None
        elif standard[0] != own:
            renames[own] = standard[0]
    tags = []
    for tag in card_data.tags:
        if tag.startswith("loss:") and tag[5:] in renames:
            new = renames[tag[5:]]
            tag = f"loss:{new}" if new else ""
        if tag and tag not in tags:
            tags.append(tag)
    card_data.tags = tags
    citations = {}
    for key, citation in (card_data.citations or {}).items():
        for own, new in renames.items():
            if new:
                key = key.replace(own, new)
        citations[key] = citation
    card_data.citations = citations
    standard = {type(x).__name__: _standard_name(x) for x in _all_losses(losses.values())}
    for info in list(card_data.train_datasets) + list(card_data.eval_datasets):
        loss_info = info.get("loss") or {}
        own = str(loss_info.get("fullname", "")).rsplit(".", 1)[-1]
        if renames.get(own) and standard.get(own):
            loss_info["fullname"] = standard[own][1]


def _all_losses(losses: Any) -> list[Any]:
    """Each loss and the losses it wraps (``.loss``), as sentence-transformers' card collects them."""
    found: list[Any] = []
    todo = [x for x in losses if x is not None]
    while todo:
        loss = todo.pop(0)
        if any(loss is f for f in found):
            continue
        found.append(loss)
        inner = getattr(loss, "loss", None)
        if inner is not None and hasattr(inner, "forward"):
            todo.append(inner)
    return found


def per_dim_results(evaluators: Mapping[tuple[str, int], Any], after: Mapping[str, Any],
                    primary: Mapping[str, str]) -> dict[Any, dict[str, float]]:
    """The card's evaluation results: one entry per evaluator and dim, named ``<evaluator>_dim<d>``
    (a copy of the sentence-transformers evaluator, so its class and settings describe it), with the
    final float32 values. Copies without ``truncate_dim`` make the card group an evaluator's dims into
    one table, one column per dim."""
    results: dict[Any, dict[str, float]] = {}
    for (name, dim), evaluator in evaluators.items():
        metrics = (after.get(name) or {}).get(str(dim))
        if not metrics:
            continue
        label = f"{name}_dim{dim}"
        entry = copy.copy(evaluator)
        entry.name = label
        if hasattr(entry, "truncate_dim"):
            entry.truncate_dim = None
        entry.primary_metric = f"{label}_{primary[name]}" if primary.get(name) else None
        results[entry] = {f"{label}_{metric}": value for metric, value in metrics.items()}
    return results


def _clean_logs(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The card's training log keeps the losses: its evaluator columns hold whichever dim and
    precision ran last (our evaluator runs each several times), and its step -1 rows are the
    evaluations before and after training, which the per-dim tables show."""
    out = []
    for row in logs or []:
        kept = {k: v for k, v in row.items() if k in _LOG_KEEP or str(k).endswith("loss")}
        if set(kept) - {"Epoch", "Step"} and kept.get("Step", 0) >= 0:
            out.append(kept)
    return out


# --------------------------------------------------------------------------------------------
# after the card is written: its YAML front matter


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(the YAML front matter as a mapping, the rest of the card)."""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end != -1:
            return yaml.safe_load(text[3:end]) or {}, text[end + 4:].lstrip("\n")
    return {}, text


def co2_eq_emissions(carbon: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The Hub's ``co2_eq_emissions`` from our codecarbon figures (None when not measured)."""
    if not carbon or not carbon.get("tracked") or carbon.get("emissions_kg") is None:
        return None
    co2: dict[str, Any] = {
        "emissions": float(f"{float(carbon['emissions_kg']) * 1000:.4g}"),  # grams, as the Hub's metadata says
        "energy_consumed": round(float(carbon["energy_kwh"]), 9),
        "source": "codecarbon",
        "training_type": "fine-tuning",
    }
    hardware = carbon.get("hardware") or {}
    if hardware.get("on_cloud") is not None:
        co2["on_cloud"] = bool(hardware["on_cloud"])
    if hardware.get("cpu_model"):
        co2["cpu_model"] = hardware["cpu_model"]
    if hardware.get("ram_total_size"):
        co2["ram_total_size"] = hardware["ram_total_size"]
    if hardware.get("gpu_model"):
        co2["hardware_used"] = hardware["gpu_model"]
    if carbon.get("country_iso_code"):
        co2["geographical_location"] = carbon["country_iso_code"]
    return co2


def finish_front_matter(readme: str | Path, config: RunConfig, results: Mapping[str, Any],
                        base_hub_id: str | None, base_label: str) -> None:
    """Put the run's base model, datasets, license, language, tags and co2_eq_emissions into the card's
    front matter, and name a base model that is not on the Hub in the body (see the module docstring)."""
    path = Path(readme)
    if not path.is_file():
        return
    meta, body = split_front_matter(path.read_text(encoding="utf-8"))
    if base_hub_id:
        meta["base_model"] = base_hub_id
    else:
        meta.pop("base_model", None)
        body = body.replace(UNKNOWN_BASE_LINE, f"- **Base model:** `{base_label}` (a local model, not on the Hub)")
    datasets = hub_datasets(config)
    if datasets:
        meta["datasets"] = datasets
    if config.card.license:
        meta["license"] = config.card.license
    if config.card.language:
        meta["language"] = list(config.card.language)
    tags = list(meta.get("tags") or [])
    tags += [t for t in config.card.tags if t not in tags]
    if tags:
        meta["tags"] = tags
    co2 = co2_eq_emissions(results.get("carbon"))
    if co2 is not None:
        meta["co2_eq_emissions"] = co2
    else:
        meta.pop("co2_eq_emissions", None)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000).strip()
    path.write_text(f"---\n{front}\n---\n\n{body}", encoding="utf-8")
