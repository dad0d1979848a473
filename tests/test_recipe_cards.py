"""The four reference recipes against the model cards they reproduce (issue 18, item 1).

Each card's stated training settings are transcribed below, one :class:`Stated` row each, with the
card file it comes from and the card's own words for it (``evidence``). The tests check that

* the loaded config (stages expanded as `mtrain run` expands them) has every stated value;
* every value a config file sets is either a stated one, a label (names, output_dir), or is marked
  ``# our choice: <reason>`` on its line (or on the line that opens the entry it belongs to);
* every ``# our choice`` is listed in docs/recipes.md, in that recipe's section;
* when the cards themselves are at hand (``../shared/seeds/``, next to the repository), each
  evidence string is in the card, so the transcription can be re-checked against the source.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from conftest import REPO

from matryoshka_train.config import load_config
from matryoshka_train.training.stages import expand

SEEDS = REPO.parent / "shared" / "seeds"
MARK = "# our choice:"


@dataclass
class Stated:
    """One setting a card states: ``path`` into the (stage's) loaded config or a function of it,
    the value the card gives, and the card's words for it. ``absent``: the card states the value by
    not listing the setting among the non-default training arguments (evidence: the word is absent).
    ``covers``: for a row whose ``path`` is a function, a regex of the YAML paths it states."""

    path: str | Callable[[Any], Any]
    value: Any
    evidence: str
    stage: int = 0
    absent: bool = False
    covers: str | None = None  # for a function row: a regex of the YAML paths it states


ARABIC_TRIPLETS = ("anchor", "positive", "negative")
TR_PUBLISHED = {  # per-dim cosine accuracy, as the card's model-index gives it
    "tr-triplet-dev": {1024: "0.9979135394096375", 768: "0.9978300929069519", 512: "0.9977466464042664",
                       256: "0.9974962472915649"},
    "all-nli-test": {1024: "0.9980804324150085", 768: "0.9980804324150085", 512: "0.9981639385223389",
                     256: "0.997996985912323"},
}
STATIC_DATASETS = [
    "wikititles", "tatoeba", "talks", "europarl", "global_voices", "muse", "wikimatrix", "opensubtitles",
    "stackexchange", "quora", "wikianswers_duplicates", "all_nli", "simple_wiki", "altlex", "flickr30k_captions",
    "coco_captions", "nli_for_simcse", "negation",
]

CARDS: dict[str, tuple[str, list[Stated]]] = {
    "arabic": ("000_798691fa0c0951cd.txt", [
        Stated("model.name_or_path", "aubmindlab/bert-base-arabertv02", "base_model: aubmindlab/bert-base-arabertv02"),
        Stated("model.max_seq_length", 512, "'max_seq_length': 512"),
        Stated("model.pooling", "mean", "'pooling_mode_mean_tokens': True"),
        Stated("model.normalize", False, "Normalize", absent=True),
        Stated("datasets.0.source.hub", "silma-ai/silma-arabic-triplets-dataset-v1.0",
               "We curated a dataset silma-ai/silma-arabic-triplets-dataset-v1.0"),
        Stated("datasets.0.source.split", "train", "while the rest were used for fine-tuning"),
        Stated("datasets.0.columns", dict(zip(ARABIC_TRIPLETS, ARABIC_TRIPLETS)), "(anchor, positive and negative)"),
        Stated("datasets.0.eval.first", 600, "Only the first 600 samples were taken to be the eval dataset"),
        Stated("loss.name", "MultipleNegativesRankingLoss", "MultipleNegativesRankingLoss"),
        Stated("loss.matryoshka", True, "Matryoshka Embedding technique"),
        Stated("training.per_device_train_batch_size", 250, "per_device_train_batch_size: 250"),
        Stated("training.per_device_eval_batch_size", 10, "per_device_eval_batch_size: 10"),
        Stated("training.learning_rate", 1e-5, "learning_rate: 1e-05"),
        Stated("training.num_train_epochs", 3, "num_train_epochs: 3"),
        Stated("training.precision", "bf16", "bf16: True"),
        Stated("training.dataloader_drop_last", True, "dataloader_drop_last: True"),
        Stated("training.optim", "adamw_torch_fused", "optim: adamw_torch_fused"),
        Stated("training.batch_sampler", "no_duplicates", "batch_sampler: no_duplicates"),
        Stated("training.warmup_ratio", 0.0, "warmup", absent=True),  # not listed: the trainer's default, 0
        # the second stage trains with the card's other loss, the rest as stated
        Stated("loss.name", "CosineSimilarityLoss", "loss:CosineSimilarityLoss", stage=1),
        Stated("training.learning_rate", 1e-5, "learning_rate: 1e-05", stage=1),
        Stated("training.warmup_ratio", 0.0, "warmup", stage=1, absent=True),
        Stated("training.precision", "bf16", "bf16: True", stage=1),
        Stated("training.optim", "adamw_torch_fused", "optim: adamw_torch_fused", stage=1),
        Stated("model.max_seq_length", 512, "'max_seq_length': 512", stage=1),
        # the published figure, MTEB STS17 ar-ar (x100 in the card)
        Stated("evaluation.reference.metrics.sts17-ar-ar_dim768_spearman_cosine", 0.8424703763883515,
               "value: 84.24703763883515"),
        Stated("evaluation.reference.metrics.sts17-ar-ar_dim768_pearson_cosine", 0.8412612492708037,
               "value: 84.12612492708037"),
        Stated("evaluation.evaluators.1.source.revision", "faeb762787bd10488a50c8b5be4a3b82e411949c",
               "revision: faeb762787bd10488a50c8b5be4a3b82e411949c"),
        Stated("evaluation.evaluators.1.source.subset", "ar-ar", "name: MTEB STS17 (ar-ar)"),
    ]),
    "turkish": ("001_6881585390b8fdc5.txt", [
        Stated("model.name_or_path", "BAAI/bge-m3", "base_model: BAAI/bge-m3"),
        Stated("model.pooling", "cls", "'pooling_mode_cls_token': True"),
        Stated("model.normalize", True, "(2): Normalize()"),
        Stated("model.max_seq_length", 8192, "'max_seq_length': 8192"),
        Stated("datasets.0.source.hub", "seroe/vodex-turkish-triplets-large",
               "datasets: - seroe/vodex-turkish-triplets-large"),
        Stated("datasets.0.source.split", "train", "Size: 215,676 training samples"),
        Stated("datasets.0.source.revision", "1fe9d63490a69cb96da6b76f4bff1a43c48cbdee",
               "tree/1fe9d63490a69cb96da6b76f4bff1a43c48cbdee"),
        Stated("datasets.0.eval.source.revision", "1fe9d63490a69cb96da6b76f4bff1a43c48cbdee",
               "tree/1fe9d63490a69cb96da6b76f4bff1a43c48cbdee"),
        Stated("datasets.0.columns", {"query": "query", "positive": "positive", "negative": "negative"},
               "Columns: query, positive, and negative"),
        Stated("loss.name", "CachedMultipleNegativesRankingLoss", '"loss": "CachedMultipleNegativesRankingLoss"'),
        Stated("matryoshka.dims", [1024, 768, 512, 256], '"matryoshka_dims": [ 1024, 768, 512, 256 ]'),
        Stated("matryoshka.weights", [1, 1, 1, 1], '"matryoshka_weights": [ 1, 1, 1, 1 ]'),
        Stated("matryoshka.n_dims_per_step", -1, '"n_dims_per_step": -1'),
        Stated("training.eval_strategy", "steps", "eval_strategy: steps"),
        Stated("training.per_device_train_batch_size", 2048, "per_device_train_batch_size: 2048"),
        Stated("training.per_device_eval_batch_size", 256, "per_device_eval_batch_size: 256"),
        Stated("training.learning_rate", 5e-5, "learning_rate: 5e-05"),
        Stated("training.weight_decay", 0.01, "weight_decay: 0.01"),
        Stated("training.num_train_epochs", 1, "num_train_epochs: 1"),
        Stated("training.lr_scheduler_type", "cosine", "lr_scheduler_type: cosine"),
        Stated("training.warmup_ratio", 0.05, "warmup_ratio: 0.05"),
        Stated("training.save_only_model", True, "save_only_model: True"),
        Stated("training.precision", "bf16", "bf16: True"),
        Stated("training.batch_sampler", "no_duplicates", "batch_sampler: no_duplicates"),
        Stated("training.optim", "adamw_torch", "optim: adamw_torch -"),
        Stated("training.seed", 42, "seed: 42"),
        Stated("training.max_grad_norm", 1.0, "max_grad_norm: 1.0"),
        Stated("training.gradient_accumulation_steps", 1, "gradient_accumulation_steps: 1"),
        Stated("training.dataloader_drop_last", False, "dataloader_drop_last: False"),
        Stated("training.multi_dataset_batch_sampler", "proportional", "multi_dataset_batch_sampler: proportional"),
        # the training log: a row (loss and evaluation) every 12 steps
        Stated("training.logging_steps", 12, "| 0.1132 | 12 | 3.8771 | 0.2379 |"),
        Stated("training.eval_steps", 12, "| 0.2264 | 24 | 1.0195 | 0.1654 |"),
        Stated(lambda c: [(e.type, e.name) for e in c.evaluation.evaluators],
               [("triplet", "tr-triplet-dev"), ("triplet", "all-nli-test")],
               "Datasets: tr-triplet-dev-1024d and all-nli-test-1024d * Evaluated with [TripletEvaluator]",
               covers=r"evaluation\.evaluators\.\d+\.(type|dataset|columns)"),
        *[Stated(f"evaluation.reference.metrics.{name}_dim{dim}_cosine_accuracy", float(value), f"value: {value}")
          for name, per_dim in TR_PUBLISHED.items() for dim, value in per_dim.items()],
    ]),
    "distill": ("002_94dcfd41f2ed2235.txt", [
        Stated("model.name_or_path", "sentence-transformers/all-MiniLM-L6-v2",
               "base_model: sentence-transformers/all-MiniLM-L6-v2"),
        Stated("model.max_seq_length", 256, "'max_seq_length': 256"),
        Stated("model.pooling", "mean", "'pooling_mode_mean_tokens': True"),
        Stated("model.normalize", True, "(2): Normalize()"),
        Stated("loss.name", "MSELoss", "loss:MSELoss"),
        Stated("loss.matryoshka", False, "Matryoshka", absent=True),
        Stated("datasets.0.columns", {"sentence": "sentence"}, "Columns: sentence and label"),
        Stated("datasets.0.eval.count", 10000, "Size: 10,000 evaluation samples"),
        Stated("training.eval_strategy", "steps", "eval_strategy: steps"),
        Stated("training.per_device_train_batch_size", 64, "per_device_train_batch_size: 64"),
        Stated("training.per_device_eval_batch_size", 64, "per_device_eval_batch_size: 64"),
        Stated("training.learning_rate", 1e-4, "learning_rate: 0.0001"),
        Stated("training.num_train_epochs", 1, "num_train_epochs: 1"),
        Stated("training.warmup_ratio", 0.1, "warmup_ratio: 0.1"),
        Stated("training.precision", "fp16", "fp16: True"),
        Stated("training.load_best_model_at_end", True, "load_best_model_at_end: True"),
        Stated("training.optim", "adamw_torch", "optim: adamw_torch -"),
        Stated("training.lr_scheduler_type", "linear", "lr_scheduler_type: linear"),
        Stated("training.weight_decay", 0.0, "weight_decay: 0.0"),
        Stated("training.seed", 42, "seed: 42"),
        Stated("training.max_grad_norm", 1.0, "max_grad_norm: 1.0"),
        Stated("training.batch_sampler", "batch_sampler", "batch_sampler: batch_sampler"),
        Stated("training.dataloader_drop_last", False, "dataloader_drop_last: False"),
        # the training log: the loss every 1000 steps, an evaluation every 5000
        Stated("training.logging_steps", 1000, "| 0.0071 | 1000 | 0.0032 | - |"),
        Stated("training.eval_steps", 5000, "| 0.0355 | 5000 | 0.0015 | 0.0013 | 0.8149 |"),
        Stated(lambda c: [(e.type, e.name) for e in c.evaluation.evaluators],
               [("sts", "sts-dev"), ("mse", "heldout-mse"), ("sts", "sts-test")],
               "sts-dev_spearman_cosine | negative_mse | sts-test_spearman_cosine",
               covers=r"evaluation\.evaluators\.\d+\.(type|dataset|columns)"),
        Stated("evaluation.reference.metrics.sts-dev_dim384_spearman_cosine", 0.864870367786895,
               "value: 0.864870367786895"),
        Stated("evaluation.reference.metrics.sts-dev_dim384_pearson_cosine", 0.8649118460865306,
               "value: 0.8649118460865306"),
        Stated("evaluation.reference.metrics.sts-test_dim384_spearman_cosine", 0.8190218550432983,
               "value: 0.8190218550432983"),
        Stated("evaluation.reference.metrics.sts-test_dim384_pearson_cosine", 0.8202873084532003,
               "value: 0.8202873084532003"),
    ]),
    "static": ("003_8cc168e9120f90cd.txt", [
        Stated("model.name_or_path", "google-bert/bert-base-multilingual-uncased",
               "Static Embeddings with BERT Multilingual uncased tokenizer"),
        Stated("model.type", "static", "(0): StaticEmbedding("),
        Stated("model.embedding_dim", 1024, "EmbeddingBag(105879, 1024, mode='mean')"),
        Stated(lambda c: [d.name for d in c.datasets], STATIC_DATASETS,
               "trained on the " + ", ".join(STATIC_DATASETS[:-1]) + " and negation datasets"),
        Stated(lambda c: {c.loss_for(d).name for d in c.datasets}, {"MultipleNegativesRankingLoss"},
               "MultipleNegativesRankingLoss", covers=r"loss\.name"),
        Stated("loss.matryoshka", True, "This model was trained with a Matryoshka loss"),
        # every dataset has held-out rows: the card's log has an eval loss per dataset
        Stated(lambda c: all(d.eval is not None for d in c.datasets), True, "wikititles loss tatoeba loss talks loss"),
        Stated("training.eval_strategy", "steps", "eval_strategy: steps"),
        Stated("training.per_device_train_batch_size", 2048, "per_device_train_batch_size: 2048"),
        Stated("training.per_device_eval_batch_size", 2048, "per_device_eval_batch_size: 2048"),
        Stated("training.learning_rate", 0.2, "learning_rate: 0.2"),
        Stated("training.num_train_epochs", 1, "num_train_epochs: 1"),
        Stated("training.warmup_ratio", 0.1, "warmup_ratio: 0.1"),
        Stated("training.precision", "bf16", "bf16: True"),
        Stated("training.batch_sampler", "no_duplicates", "batch_sampler: no_duplicates"),
        # the training log: the loss and every dataset's eval loss every 1000 steps
        Stated("training.logging_steps", 1000, "0.0327 1000 21.3661"),
        Stated("training.eval_steps", 1000, "0.0654 2000 9.8377 11.7637"),
        Stated("carbon.enabled", True, "Carbon emissions were measured using CodeCarbon"),
    ]),
}

# values that are labels, not settings: they are neither stated by a card nor a choice of ours
LABELS = re.compile(
    r"^(training\.output_dir|evaluation\.reference\.source|(stages\.\d+\.)?(datasets|evaluation\.evaluators)\.\d+\.name"
    r"|stages\.\d+\.name)$"
)


def value_at(config: Any, path: str | Callable[[Any], Any]) -> Any:
    if callable(path):
        return path(config)
    node = config
    for part in path.split("."):
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node[part]
        else:
            node = getattr(node, part)
    return node


def stage_configs(recipe: str) -> list[Any]:
    config = load_config(REPO / "configs" / f"{recipe}.yaml")
    return [s.config for s in expand(config, for_check=True)] if config.stages else [config]


@pytest.mark.parametrize("recipe", list(CARDS))
def test_the_config_has_every_value_its_card_states(recipe):
    configs = stage_configs(recipe)
    card, stated = CARDS[recipe]
    wrong = []
    for row in stated:
        got = value_at(configs[row.stage], row.path)
        equal = got == pytest.approx(row.value) if isinstance(row.value, float) else got == row.value
        if not equal:
            where = row.path if isinstance(row.path, str) else row.evidence
            wrong.append(f"{where}: config {got!r}, card {row.value!r}")
    assert not wrong, f"configs/{recipe}.yaml differs from {card}:\n" + "\n".join(wrong)


def card_text(name: str) -> str:
    """The card with Markdown backticks dropped and whitespace runs made one space."""
    return re.sub(r"\s+", " ", (SEEDS / name).read_text(encoding="utf-8").replace("`", ""))


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the model cards (../shared/seeds) are not next to this checkout")
@pytest.mark.parametrize("recipe", list(CARDS))
def test_each_transcribed_value_is_in_the_card(recipe):
    card, stated = CARDS[recipe]
    text = card_text(card)
    missing = [row.evidence for row in stated if not row.absent and row.evidence not in text]
    listed = [row.evidence for row in stated if row.absent and re.search(re.escape(row.evidence), text, re.I)]
    assert not missing, f"not in {card}: {missing}"
    assert not listed, f"{card} does list {listed}: it is stated, not absent"


# --------------------------------------------------------------------------------------------
# every other value is marked as ours


@dataclass
class Leaf:
    path: str
    line: int  # 0-based
    owners: set[int]  # lines whose "# our choice" covers it: its own, and those opening its enclosing entries


def leaves(node: yaml.Node, path: str = "", owners: frozenset[int] = frozenset(), root: bool = True) -> list[Leaf]:
    here = owners if root else owners | {node.start_mark.line}
    if isinstance(node, yaml.MappingNode):
        out = []
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else key.value
            out += leaves(value, child, here | {key.start_mark.line}, root=False)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [leaf for i, item in enumerate(node.value) for leaf in leaves(item, f"{path}.{i}", here, root=False)]
    return [Leaf(path, node.start_mark.line, set(here) | {node.start_mark.line})]


def unmarked(recipe: str, text: str) -> list[str]:
    """Values the config sets that are not a card's, not a label and not marked as our choice."""
    lines = text.splitlines()
    _, stated = CARDS[recipe]
    from_card = {row.path if row.stage == 0 else f"stages.{row.stage}.{row.path}"
                 for row in stated if isinstance(row.path, str)}
    patterns = [re.compile(row.covers) for row in stated if row.covers]
    out = []
    for leaf in leaves(yaml.compose(text)):
        covered = (leaf.path in from_card or any(leaf.path.startswith(p + ".") for p in from_card)
                   or any(p.match(leaf.path) for p in patterns))
        if covered or LABELS.match(leaf.path) or any(MARK in lines[i] for i in leaf.owners):
            continue
        out.append(f"line {leaf.line + 1}: {leaf.path}")
    return out


@pytest.mark.parametrize("recipe", list(CARDS))
def test_every_value_no_card_states_is_marked_our_choice(recipe):
    text = (REPO / "configs" / f"{recipe}.yaml").read_text(encoding="utf-8")
    left = unmarked(recipe, text)
    assert not left, (f"configs/{recipe}.yaml sets values its card does not state and does not mark "
                      f"'{MARK} <reason>':\n" + "\n".join(left))


def test_the_audit_fails_on_an_unmarked_value():
    """The check above can fail: take a marker away, add a setting, and it names the line."""
    text = (REPO / "configs" / "distill.yaml").read_text(encoding="utf-8")
    stripped = text.replace("  save_total_limit: 2                      # our choice: disk", "  save_total_limit: 2")
    assert stripped != text
    assert any(u.endswith("training.save_total_limit") for u in unmarked("distill", stripped))
    added = text.replace("  warmup_ratio: 0.1\n", "  warmup_ratio: 0.1\n  max_steps: 100\n")
    assert [u.split(": ")[1] for u in unmarked("distill", added)] == ["training.max_steps"]


def marked_paths(text: str) -> list[str]:
    """The YAML path of each '# our choice' line: of the list item or else the first key that
    starts on it, list indices written as []."""
    lines = text.splitlines()
    starts: dict[int, str] = {}

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = f"{path}.{key.value}" if path else key.value
                starts.setdefault(key.start_mark.line, child)
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                starts.setdefault(item.start_mark.line, f"{path}.{i}")
                walk(item, f"{path}.{i}")

    walk(yaml.compose(text), "")
    return [re.sub(r"\.\d+", "[]", starts[i]) for i, line in enumerate(lines) if MARK in line and i in starts]


@pytest.mark.parametrize("recipe", list(CARDS))
def test_every_choice_of_ours_is_listed_in_docs_recipes(recipe):
    doc = (REPO / "docs" / "recipes.md").read_text(encoding="utf-8")
    section = doc.split(f"\n## {recipe} ", 1)[1].split("\n## ", 1)[0]
    choices = section.split("Our choices", 1)[1] if "Our choices" in section else ""
    paths = marked_paths((REPO / "configs" / f"{recipe}.yaml").read_text(encoding="utf-8"))
    assert paths, f"configs/{recipe}.yaml marks no choice of ours"
    missing = sorted({p for p in paths if f"`{p}`" not in choices})
    assert not missing, f"docs/recipes.md, section {recipe}, 'Our choices' does not list: {missing}"
