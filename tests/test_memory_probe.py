"""The largest batch first (training.memory_probe): which rows make the largest batch, that a run with
the probe trains the same weights bit for bit, that a batch which cannot fit ends the run before
step 1 with one line of advice, and that any other failure of the probe never stops a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import three_step_run
from datasets import Dataset

from matryoshka_train.cli import main
from matryoshka_train.training import memory_probe
from matryoshka_train.training.speed import decide


def _rows(n: int = 40) -> Dataset:
    rng = np.random.default_rng(0)
    anchor_lengths, positive_lengths = rng.permutation(n) + 1, rng.permutation(n) + 1
    return Dataset.from_dict({
        "anchor": [f"{int(k)}:" + "a" * int(k) for k in anchor_lengths],
        "positive": [f"{int(a)}:" + "p" * (100 - int(k)) for a, k in zip(anchor_lengths, positive_lengths)],
        "score": [float(k) for k in anchor_lengths],
        "__tok__anchor__input_ids": [list(range(int(k))) for k in anchor_lengths],
        "__tok__positive__input_ids": [list(range(int(k))) for k in positive_lengths],
    })


def _epochs(lengths, size, batches, seed):
    """The batches costliest_batch draws, rebuilt the same way: each epoch a permutation cut in batches."""
    rng, out, n = np.random.default_rng(seed), [], len(lengths[0])
    while len(out) < batches:
        perm = rng.permutation(n)[: (n // size) * size].reshape(-1, size)
        out.extend(perm[: batches - len(out)])
    return out


def test_the_probed_batch_is_the_costliest_of_as_many_as_the_run_draws():
    rng = np.random.default_rng(1)
    lengths = [rng.integers(1, 10, 1000), rng.integers(1, 200, 1000) ** 2 // 200]  # a long tail in the second
    for packed in (True, False):
        rows, drawn = memory_probe.costliest_batch(lengths, 16, 300, packed, seed=7)
        drawn_batches = _epochs(lengths, 16, 300, seed=7)
        assert drawn == 300 and len(drawn_batches) == 300 and len(set(rows.tolist())) == 16

        def cost(batch, packed=packed):
            return sum(int(c[batch].sum() if packed else c[batch].max()) for c in lengths)

        assert cost(rows) == max(cost(b) for b in drawn_batches)
        top = sum(int(np.sort(c)[-16:].sum()) for c in lengths) if packed else sum(int(c.max()) for c in lengths)
        assert cost(rows) < top or not packed  # packed: far below each column's 16 longest together
    one, drawn = memory_probe.costliest_batch(lengths, 16, 1, True, seed=7)
    assert drawn == 1 and np.array_equal(one, _epochs(lengths, 16, 1, seed=7)[0])
    few, drawn = memory_probe.costliest_batch([np.arange(5)], 16, 10, True, seed=0)  # fewer rows than a batch
    assert sorted(few.tolist()) == [0, 1, 2, 3, 4]


def test_the_largest_batch_holds_whole_rows_measured_in_tokens_or_characters():
    data = _rows()
    rows, probed = memory_probe.largest_batch("d", data, 5, batches=40, packed=True, seed=3)
    assert len(rows) == 5 and probed.drawn == 40 and probed.unit == "tokens"
    for row in rows:  # whole rows: each text with its own ids and label
        k = len(row["__tok__anchor__input_ids"])
        assert row["anchor"] == f"{k}:" + "a" * k and row["positive"].startswith(f"{k}:") and row["score"] == k
    assert probed.tokens == sum(len(r["__tok__anchor__input_ids"]) + len(r["__tok__positive__input_ids"])
                                for r in rows)
    assert probed.longest == max(len(r[c]) for r in rows for c in ("__tok__anchor__input_ids",
                                                                       "__tok__positive__input_ids"))
    assert "the largest of 40 batches like the run's, from d (5 rows, texts up to" in probed.line()

    texts = data.select_columns(["anchor", "positive", "score"])  # not pre-tokenized: by characters
    rows, probed = memory_probe.largest_batch("d", texts, 3, batches=13, packed=False)
    assert probed.unit == "characters" and probed.tokens is None
    assert probed.longest == max(len(r[c]) for r in rows for c in ("anchor", "positive"))

    shuffled = data.shuffle(seed=1).select(range(10))  # an indices mapping: the dataset's own rows only
    rows, _ = memory_probe.largest_batch("d", shuffled, 10, batches=1)
    assert sorted(r["anchor"] for r in rows) == sorted(shuffled["anchor"])


def test_a_run_draws_as_many_batches_as_its_steps_or_epochs():
    from types import SimpleNamespace

    args = SimpleNamespace(per_device_train_batch_size=8, max_steps=10, gradient_accumulation_steps=2,
                           num_train_epochs=3)
    assert memory_probe.batches_in_run(args, 30, 60) == 10  # half of 20 micro-batches
    args.max_steps = -1
    assert memory_probe.batches_in_run(args, 30, 60) == 12  # 3 epochs of 30 rows in batches of 8


def test_auto_probes_cuda_memory_only():
    from test_speed import _training

    assert decide(_training(), "cuda").memory_probe
    cpu = decide(_training(), "cpu")
    assert not cpu.memory_probe and "RAM" in cpu.reasons["memory_probe"]
    assert not decide(_training(), "mps").memory_probe
    assert decide(_training(memory_probe=True), "cpu").memory_probe


def test_a_run_with_the_probe_trains_the_same_weights_bit_for_bit(tiny_config, tiny_model_dir, tmp_path, monkeypatch):
    """The tiny model keeps its dropout: without the random-number state put back, step 1 would draw
    other masks (the last run shows the test can tell)."""
    seen: list[str] = []
    probed, with_probe = three_step_run(tiny_config, tiny_model_dir, tmp_path / "probe", echo=seen.append,
                                        memory_probe=True)
    plain, without = three_step_run(tiny_config, tiny_model_dir, tmp_path / "plain", memory_probe=False)
    (line,) = [s for s in seen if s.startswith("memory_probe:")]
    assert line.startswith("memory_probe: the largest of 3 batches like the run's, from tiny (8 rows, texts up to ")
    (summary,) = probed["memory_probe"]
    assert summary["dataset"] == "tiny" and summary["rows"] == 8 and summary["unit"] == "tokens"
    assert summary["tokens"] >= 8 * 3 * 5 and summary["seconds"] > 0 and summary["batches_drawn"] == 3
    assert plain["memory_probe"] is None and probed["speed"]["memory_probe"] is True
    assert probed["padding"] == plain["padding"]  # the sorted forward's counters were put back
    for key in without:
        assert torch.equal(with_probe[key], without[key]), key

    monkeypatch.setattr(memory_probe.torch, "set_rng_state", lambda state: None)  # the probe's dropout draws stay
    _, unrestored = three_step_run(tiny_config, tiny_model_dir, tmp_path / "unrestored", memory_probe=True)
    assert any(not torch.equal(unrestored[k], without[k]) for k in without)


def test_the_probe_runs_the_loss_forward_and_backward(tiny_config, tiny_model_dir, tmp_path, monkeypatch):
    calls: list[tuple[int, bool]] = []
    real = memory_probe._forward_backward

    def spy(trainer, rows, name, device, probed):
        real(trainer, rows, name, device, probed)
        grads = [p.grad for n, p in trainer.model.named_parameters() if ".encoder." in n]
        calls.append((len(rows), len(grads) > 0 and all(g is not None and bool(g.abs().sum() > 0) for g in grads)))

    monkeypatch.setattr(memory_probe, "_forward_backward", spy)
    three_step_run(tiny_config, tiny_model_dir, tmp_path / "spy", memory_probe=True)
    assert calls == [(8, True)]  # every encoder weight got a gradient from the largest batch (then dropped)


def test_a_batch_that_cannot_fit_ends_the_run_before_step_one(tiny_config, write_config, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(memory_probe, "_forward_backward", no_memory)
    cfg = dict(tiny_config, evaluation={"evaluators": []})
    cfg["training"] = dict(tiny_config["training"], memory_probe=True, save_strategy="steps", save_steps=1)
    assert main(["run", str(write_config(cfg))]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: the largest of 4 batches like the run's, from tiny (8 rows, texts up to ")
    assert "does not fit in GPU memory: found by training.memory_probe before the first step" in line
    assert "lower training.per_device_train_batch_size (now 8)" in line
    assert "Traceback" not in err
    out = Path(cfg["training"]["output_dir"])
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()


def test_any_other_probe_failure_is_one_note_and_the_run_trains(tiny_config, tiny_model_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a column the probe cannot read\nsecond line")

    monkeypatch.setattr(memory_probe, "largest_batch", broken)
    seen: list[str] = []
    results, _ = three_step_run(tiny_config, tiny_model_dir, tmp_path / "broken", echo=seen.append, memory_probe=True)
    assert "memory_probe: skipped tiny (ValueError: a column the probe cannot read)" in seen
    assert results["train"]["steps"] == 3 and results["memory_probe"] == []


@pytest.mark.parametrize("extra", [{"gradient_checkpointing": True}])
def test_the_probe_stands_aside_where_it_cannot_stand_for_a_step(extra, tiny_config, tiny_model_dir, tmp_path):
    seen: list[str] = []
    results, _ = three_step_run(tiny_config, tiny_model_dir, tmp_path / "gc", echo=seen.append, memory_probe=True,
                                extra=extra)
    assert any(s.startswith("memory_probe: skipped (gradient checkpointing") for s in seen)
    assert results["memory_probe"] == []


def test_each_dataset_of_a_multi_dataset_run_is_probed_with_its_own_loss(tiny_config, tiny_model_dir, data_dir,
                                                                          tmp_path, monkeypatch):
    losses: list[tuple[str, str]] = []
    real = memory_probe._forward_backward

    def spy(trainer, rows, name, device, probed):
        real(trainer, rows, name, device, probed)
        loss = trainer.loss[name]
        losses.append((name, type(getattr(loss, "loss", loss)).__name__))  # the loss inside the Matryoshka wrapper

    monkeypatch.setattr(memory_probe, "_forward_backward", spy)
    cfg = dict(tiny_config)
    cfg["datasets"] = [
        tiny_config["datasets"][0],
        {"name": "pairs", "source": {"path": str(data_dir / "pairs.jsonl")},
         "columns": ["sentence1", "sentence2", "score"], "loss": {"name": "cosent"}},
        {"name": "distill", "source": {"path": str(data_dir / "distill.jsonl")},  # labels: teacher embeddings
         "columns": ["sentence", "label"], "loss": {"name": "mse"}},
    ]
    seen: list[str] = []
    results, _ = three_step_run(cfg, tiny_model_dir, tmp_path / "two", echo=seen.append, memory_probe=True)
    assert [p["dataset"] for p in results["memory_probe"]] == ["tiny", "pairs", "distill"]
    assert losses == [("tiny", "MultipleNegativesRankingLoss"), ("pairs", "CoSENTLoss"), ("distill", "MSELoss")]
    assert len([s for s in seen if s.startswith("memory_probe: the largest of")]) == 3


def test_a_gradient_cache_loss_trains_the_same_weights_after_the_probe(tiny_config, tiny_model_dir, tmp_path):
    """CachedMNRL replays each mini-batch's random state in its backward pass: the probe's own pass
    must leave nothing of its cache or random state to the first step."""
    cfg = dict(tiny_config, loss={"name": "cached_mnrl", "kwargs": {"mini_batch_size": 3}})
    probed, with_probe = three_step_run(cfg, tiny_model_dir, tmp_path / "probe", memory_probe=True)
    _, without = three_step_run(cfg, tiny_model_dir, tmp_path / "plain", memory_probe=False)
    assert probed["memory_probe"][0]["rows"] == 8
    for key in without:
        assert torch.equal(with_probe[key], without[key]), key


def test_the_probe_runs_under_the_runs_autocast(tiny_config, tiny_model_dir, tmp_path, monkeypatch):
    """bf16 on a CPU (a run here would fall back to fp32; the test lets it keep bf16) stands in for a
    GPU's bf16: the probe's forward runs under the trainer's autocast, as the steps do (bf16 matrix
    products inside it), and the run still trains the same weights."""
    from matryoshka_train.training import plan

    monkeypatch.setattr(plan, "resolve_precision", lambda asked, cuda, echo=print: asked)
    dtypes: list[torch.dtype] = []
    real = memory_probe._forward_backward

    def spy(trainer, rows, name, device, probed):
        hook = trainer.model[0].auto_model.encoder.layer[0].attention.self.query.register_forward_hook(
            lambda module, args, out: dtypes.append(out.dtype))
        try:
            real(trainer, rows, name, device, probed)
        finally:
            hook.remove()

    monkeypatch.setattr(memory_probe, "_forward_backward", spy)
    cpu_bf16 = {"precision": "bf16", "extra": {"use_cpu": True}}  # the trainer's own switch for bf16 on a CPU
    _, with_probe = three_step_run(tiny_config, tiny_model_dir, tmp_path / "probe", memory_probe=True, **cpu_bf16)
    monkeypatch.setattr(memory_probe, "_forward_backward", real)
    _, without = three_step_run(tiny_config, tiny_model_dir, tmp_path / "plain", memory_probe=False, **cpu_bf16)
    assert dtypes and set(dtypes) == {torch.bfloat16}  # one call per chunk of the sorted forward
    for key in without:
        assert torch.equal(with_probe[key], without[key]), key


def test_the_skip_note_is_one_line_for_any_exception():
    note = memory_probe._skipped("d", ValueError("first line\nsecond"))
    assert note == "memory_probe: skipped d (ValueError: first line)"
    assert memory_probe._skipped("d", RuntimeError()) == "memory_probe: skipped d (RuntimeError: )"  # no message
