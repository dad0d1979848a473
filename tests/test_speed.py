"""Device-aware speed features (issue #14): what `auto` resolves to per device, that `check` says so,
that a run records it, and that the training hot loop reads nothing back from the device except on
logging steps."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from matryoshka_train.config import validate
from matryoshka_train.training.entry import run
from matryoshka_train.training.speed import decide

# --------------------------------------------------------------------------------------------
# auto decisions per device


def _training(**keys):
    return validate(
        {
            "model": {"name_or_path": "x"},
            "datasets": [{"name": "a", "source": {"path": "a.jsonl"}}],
            "loss": {"name": "mnrl"},
            "training": keys,
        }
    ).training


def test_auto_turns_the_cpu_measured_features_on_for_cpu():
    plan = decide(_training(), "cpu")
    assert plan.sorted_forward and plan.pretokenize
    assert plan.forward_chunk_min_tokens == 1024
    assert plan.nan_check == "every_step"
    assert plan.pad_to_multiple_of is None and plan.dataloader_num_workers == 0
    assert not plan.pin_memory and not plan.non_blocking
    assert plan.reasons["sorted_forward"].startswith("auto: measured")


def test_auto_keeps_unmeasured_or_slower_features_off_on_a_gpu():
    plan = decide(_training(), "cuda")
    assert not plan.sorted_forward  # measured slower on an H100
    assert plan.nan_check == "logging_steps"  # no host read every step
    assert plan.pin_memory and plan.non_blocking
    assert plan.pad_to_multiple_of == 64  # measured 3.6x on an H100: fewer distinct widths to set up
    assert "3.6x" in plan.reasons["pad_to_multiple_of"]
    assert plan.dataloader_num_workers == 0
    assert plan.pretokenize  # host-side work
    assert decide(_training(), "mps").pad_to_multiple_of is None  # not measured there
    assert "0.09-0.42x" in plan.reasons["sorted_forward"]


def test_packed_forward_replaces_the_sorted_forward_when_on():
    plan = decide(_training(packed_forward=True), "cpu")
    assert plan.packed_forward and not plan.sorted_forward
    assert plan.reasons["sorted_forward"] == "off: packed_forward replaces it"


def test_packed_forward_is_on_for_cuda_where_the_varlen_kernel_runs(monkeypatch):
    """Measured faster on an H200 with flash attention's varlen kernel (bf16); where that kernel cannot
    run (fp32, a pre-Ampere GPU) its attention would run padded, never measured on a GPU: off."""
    plan = decide(_training(precision="bf16"), "cuda")
    assert plan.packed_forward and not plan.sorted_forward and not plan.compile_layers
    assert "1.17-1.59x" in plan.reasons["packed_forward"] and "0.80-1.11x" in plan.reasons["compile_layers"]
    assert decide(_training(), "cuda", precision="fp16").packed_forward
    fp32 = decide(_training(precision="fp32"), "cuda")
    assert not fp32.packed_forward and "fp32" in fp32.reasons["packed_forward"]
    assert not decide(_training(precision="bf16"), "cuda", precision="fp32").packed_forward  # the resolved one wins
    assert not decide(_training(precision="bf16"), "mps").packed_forward
    cpu = decide(_training(precision="bf16"), "cpu")
    assert not cpu.packed_forward and "0.69x" in cpu.reasons["packed_forward"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    old = decide(_training(precision="fp16"), "cuda")
    assert not old.packed_forward and "sm80" in old.reasons["packed_forward"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert decide(_training(), "cuda").packed_forward  # auto precision resolves to bf16 on this GPU
    assert decide(_training(packed_forward=False, precision="bf16"), "cuda").reasons["packed_forward"] == (
        "set in the config")


def test_explicit_values_win_over_auto_on_every_device():
    keys = {
        "sorted_forward": True,
        "pretokenize": False,
        "pad_to_multiple_of": 64,
        "nan_check": "every_step",
        "dataloader_num_workers": 2,
        "forward_chunk_min_tokens": 4096,
    }
    for device in ("cpu", "cuda"):
        plan = decide(_training(**keys), device)
        assert (plan.sorted_forward, plan.pretokenize, plan.pad_to_multiple_of, plan.nan_check) == (
            True,
            False,
            64,
            "every_step",
        )
        assert (plan.dataloader_num_workers, plan.forward_chunk_min_tokens) == (2, 4096)
        assert plan.reasons["sorted_forward"] == "set in the config"
        assert not plan.packed_forward  # packed_forward auto yields to a sorted forward asked for by name


def test_a_bad_speed_value_is_one_config_error(write_config, tiny_config, capsys):
    from matryoshka_train.cli import main

    bad = copy.deepcopy(tiny_config)
    bad["training"]["nan_check"] = "sometimes"
    assert main(["check", str(write_config(bad))]) == 2
    err = capsys.readouterr()
    assert "training.nan_check" in err.out + err.err
    assert "Traceback" not in err.out + err.err


def test_check_prints_each_speed_decision_and_why(write_config, tiny_config, capsys):
    from matryoshka_train.cli import main

    assert main(["check", str(write_config(tiny_config))]) == 0
    out = capsys.readouterr().out
    assert "Speed features on cpu:" in out
    for key in (
        "sorted_forward: on (auto:",
        "pretokenize: on (auto:",
        "columnar_fetch: on (auto: host-side work",
        "fused_loss: off (auto: not measured in training yet",
        "memory_probe: off (auto: no fixed device memory to probe here",
        "nan_check: every_step (auto:",
        "pad_to_multiple_of: off (auto:",
        "dataloader_num_workers: 0 (auto:",
        "batch_sampler: no_duplicates_fast (auto:",
        "packed_forward: off (auto: measured 0.69x",
        "merge_columns: off (auto: it pays only with packed_forward",
    ):
        assert key in out, key


# --------------------------------------------------------------------------------------------
# a run uses and records the decisions


def test_a_config_without_speed_keys_trains_with_the_device_defaults(tiny_config):
    config = validate(tiny_config)
    assert config.training.sorted_forward == "auto"
    results = run(config, echo=lambda _: None)
    assert results["speed"] == {
        "device": "cpu",
        "sorted_forward": True,
        "packed_forward": False,
        "merge_columns": False,
        "fused_loss": False,
        "compile_layers": False,
        "forward_chunk_min_tokens": 1024,
        "pretokenize": True,
        "columnar_fetch": True,
        "memory_probe": False,
        "pad_to_multiple_of": None,
        "nan_check": "every_step",
        "dataloader_num_workers": 0,
        "pin_memory": False,
        "non_blocking": False,
        "cuda_allocator": None,
    }
    saved = json.loads((Path(config.training.output_dir) / "results.json").read_text())
    assert saved["speed"]["sorted_forward"] is True


# --------------------------------------------------------------------------------------------
# no host reads of device values in the hot loop

READS = ("item", "tolist", "__bool__", "__float__", "__int__")


class HostReads(TrainerCallback):
    """Counts reads of tensor values on the host (`.item()`, `bool(t)`, …) between a step's begin and
    end, per step, except the optimizer's own step counters (kept on the CPU by design)."""

    def __init__(self):
        self.per_step: dict[int, list[str]] = {}
        self.logging_steps: set[int] = set()
        self.step: int | None = None
        self.originals = {name: getattr(torch.Tensor, name) for name in READS}
        self.own = {name for name in READS if name in torch.Tensor.__dict__}  # the rest are inherited

    def __enter__(self):
        for name, original in self.originals.items():

            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                if self.step is not None:
                    caller = sys._getframe(1).f_code.co_filename
                    where = caller.replace("\\", "/")
                    # the optimizer's step counters live on the CPU by design; transformers' SDPA mask
                    # check reads only CPU masks once no_host_reads is installed (tested below)
                    if "torch/optim" not in where and "transformers/masking_utils" not in where:
                        self.per_step[self.step].append(f"{_name} in {caller}:{sys._getframe(1).f_lineno}")
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            if name in self.own:
                setattr(torch.Tensor, name, original)
            else:  # inherited from torch._C.TensorBase: remove ours, leave no copy behind
                delattr(torch.Tensor, name)

    def on_step_begin(self, args, state, control, **kwargs):
        self.step = state.global_step + 1
        self.per_step[self.step] = []

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log or control.should_save or control.should_training_stop:
            self.logging_steps.add(self.step)
        self.step = None


def _reads_per_step(tiny_config: dict, tmp_path: Path, **training) -> HostReads:
    raw = copy.deepcopy(tiny_config)
    raw["training"].update({"output_dir": str(tmp_path / "out"), "max_steps": 6, "logging_steps": 3, **training})
    raw["evaluation"]["before"] = raw["evaluation"]["after"] = False
    counter = HostReads()
    with counter:
        run(validate(raw), echo=lambda _: None, callbacks=[counter])
    return counter


def test_no_host_reads_between_logging_steps(tiny_config, tmp_path):
    """With the GPU settings (deferred NaN check, lengths carried from the collator), the steps
    between logging steps read nothing back from the device: the GPU queue never drains mid-run."""
    counter = _reads_per_step(tiny_config, tmp_path, nan_check="logging_steps", sorted_forward=True)
    quiet = {s: r for s, r in counter.per_step.items() if s not in counter.logging_steps}
    assert quiet, counter.per_step  # there were steps between logging steps
    assert all(not reads for reads in quiet.values()), quiet


def test_the_read_counter_sees_a_per_step_nan_check(tiny_config, tmp_path):
    """The counter above is not blind: the every-step NaN check reads the loss on every step."""
    counter = _reads_per_step(tiny_config, tmp_path, nan_check="every_step", sorted_forward=False)
    assert all(reads for reads in counter.per_step.values()), counter.per_step


def test_sorted_forward_gets_every_length_from_the_host(tiny_config, tmp_path):
    """Triplets: the anchor forward and the merged positive+negative forward both use the lengths
    the collator read on the host, never a read of the device mask."""
    raw = copy.deepcopy(tiny_config)
    raw["training"].update({"sorted_forward": True, "forward_chunk_tokens": 64})
    results = run(validate(raw), echo=lambda _: None)
    assert results["padding"]["padded_tokens_plain"] > 0
    assert results["padding"]["forwards_without_host_lengths"] == 0


def test_gradient_cache_mini_batches_get_their_lengths_from_the_host(tiny_config):
    """CachedMNRL embeds slices of the batch (``mask[begin:end, :width]``): the packed forward reads
    their rows' lengths from the batch mask's host copy, never from the device."""
    unread = {}
    for loss in ({"name": "cached_mnrl", "kwargs": {"mini_batch_size": 3}}, {"name": "mnrl"}):
        raw = copy.deepcopy(tiny_config)
        raw["loss"] = loss
        raw["training"].update({"packed_forward": True, "max_steps": 2, "output_dir": raw["training"]["output_dir"]
                                + loss["name"]})
        raw["evaluation"] = {"evaluators": []}
        results = run(validate(raw), echo=lambda _: None)
        assert results["padding"]["padded_tokens_run"] < results["padding"]["padded_tokens_plain"]
        unread[loss["name"]] = results["padding"]["forwards_without_host_lengths"]
    # the mini-batches (2 steps x 3 columns x 3 slices, embedded twice) add none to the plain loss's
    # count: its one is the model card's widget encode, outside training
    assert unread["cached_mnrl"] == unread["mnrl"] <= 1, unread


def test_a_slice_of_a_carrying_mask_carries_its_rows_lengths():
    """The view rule behind the test above, on a meta tensor (any read of it raises): rows and leading
    columns keep the lengths (cut at the width); other views fall back to reading."""
    from matryoshka_train.models.host_reads import HOST_LENGTHS_ATTR, host_lengths, lengths_of

    mask = torch.ones(4, 8, device="meta")
    setattr(mask, HOST_LENGTHS_ATTR, np.array([8, 3, 6, 1]))
    for view, expected in ((mask[1:3, :5], [3, 5]), (mask[2:], [6, 1])):
        lengths, carried = lengths_of(view)  # from the host: a meta tensor cannot be read
        assert lengths.tolist() == expected and carried
    assert host_lengths(mask[:, 2:]) is None and host_lengths(mask.t()) is None
    assert host_lengths(torch.ones(2, 3)) is None

# --------------------------------------------------------------------------------------------
# the deferred NaN check still stops a broken run and keeps nothing from after the bad step


@pytest.mark.parametrize("mode", ["logging_steps", "every_step"])
def test_nan_stops_the_run_in_both_check_modes(tiny_config, tmp_path, capsys, mode):
    from matryoshka_train.cli import main

    raw = copy.deepcopy(tiny_config)
    raw["training"].update(
        {
            "learning_rate": 1e30,
            "max_steps": 8,
            "logging_steps": 4,
            "nan_check": mode,
            "output_dir": str(tmp_path / mode),
        }
    )
    raw["evaluation"]["before"] = raw["evaluation"]["after"] = False
    path = tmp_path / f"{mode}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    code = main(["run", str(path)])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code != 0
    assert "the final model was NOT written" in text, text
    assert "Traceback" not in text
    assert not (tmp_path / mode / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------
# padding to a multiple: same loss, fewer distinct widths


def test_pad_to_multiple_of_gives_the_same_embeddings(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    from matryoshka_train.data.pretokenize import PretokenizedCollator

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    model.eval()
    texts = ["a short one", "a somewhat longer text with several more words in it", "x"]
    rows = [{"__tok__t__input_ids": model.tokenizer(t, truncation=True)["input_ids"]} for t in texts]
    plain = PretokenizedCollator(None, model.tokenizer).pad(rows, "t")
    rounded = PretokenizedCollator(None, model.tokenizer, pad_to_multiple_of=8, max_width=model.max_seq_length).pad(
        rows, "t"
    )
    assert rounded["input_ids"].shape[1] % 8 == 0 and rounded["input_ids"].shape[1] > plain["input_ids"].shape[1]
    with torch.no_grad():
        a = model(dict(plain))["sentence_embedding"]
        b = model(dict(rounded))["sentence_embedding"]
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    capped = PretokenizedCollator(None, model.tokenizer, pad_to_multiple_of=1000, max_width=model.max_seq_length)
    assert capped.width(5) == model.max_seq_length


def test_the_sdpa_mask_check_never_reads_a_device_mask():
    """transformers reads ``padding_mask.all()`` to decide whether SDPA may drop the mask; on a device
    our replacement keeps the mask without reading (a meta tensor stands in for a GPU tensor: any
    read of it raises)."""
    from transformers import masking_utils

    from matryoshka_train.models.host_reads import _mask_kept_without_reading

    original = masking_utils._ignore_bidirectional_mask_sdpa
    device_mask = torch.ones(4, 7, dtype=torch.bool, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        original(device_mask, 7)
    patched = _mask_kept_without_reading(original)
    assert patched(device_mask, 7) is False
    assert patched(torch.ones(2, 3, dtype=torch.bool), 3) == original(torch.ones(2, 3, dtype=torch.bool), 3)


@pytest.mark.parametrize("side", ["right", "left"])
def test_vectorised_padding_equals_the_tokenizers_own(tiny_model_dir, side):
    """The collator pads with array operations; it must give exactly the tokenizer's batch output."""
    from sentence_transformers import SentenceTransformer

    from matryoshka_train.data.pretokenize import PretokenizedCollator

    tokenizer = SentenceTransformer(str(tiny_model_dir), device="cpu").tokenizer
    tokenizer.padding_side = side
    texts = ["alpha beta", "a much longer text with many more words than the others", "x", "gamma delta epsilon"]
    rows = []
    for text in texts:
        encoded = tokenizer(text)
        rows.append({f"__tok__t__{k}": encoded[k] for k in ("input_ids", "token_type_ids") if k in encoded})
    ours = PretokenizedCollator(None, tokenizer).pad(rows, "t")
    theirs = tokenizer(texts, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if key in theirs:
            assert torch.equal(ours[key], theirs[key]), key


def test_check_refuses_trainer_arguments_the_trainer_refuses(write_config, tiny_config, capsys):
    """A prefetch factor without DataLoader workers is refused by the trainer's own arguments: check
    says so (it used to pass, and run then stopped), with the same first line as run."""
    from matryoshka_train.cli import main

    raw = copy.deepcopy(tiny_config)
    raw["training"]["dataloader_prefetch_factor"] = 2
    path = write_config(raw)
    assert main(["check", str(path)]) == 2
    checked = capsys.readouterr()
    assert main(["run", str(path)]) == 2
    ran = capsys.readouterr()
    first_error = [line for line in (checked.out + checked.err).splitlines() if line.startswith("error:")][0]
    assert "prefetch" in first_error
    assert first_error in ran.out + ran.err
    assert "Traceback" not in checked.out + checked.err + ran.out + ran.err



def test_dataloader_workers_train_what_the_main_process_trains(tiny_config, no_dropout_model_dir, tmp_path):
    """DataLoader workers (the next GPU lever, docs/benchmarks.md finding 6) collate in other processes:
    the row lengths still come along from the host, and the run ends with the weights of one that
    collates in the main process."""
    from conftest import assert_trained_alike, three_step_run

    weights, unread = {}, {}
    for workers in (0, 2):
        extra = {"dataloader_prefetch_factor": 2} if workers else {}
        results, weights[workers] = three_step_run(tiny_config, no_dropout_model_dir, tmp_path / f"w{workers}",
                                                   packed_forward=True, dataloader_num_workers=workers, **extra)
        assert results["speed"]["dataloader_num_workers"] == workers
        unread[workers] = results["padding"]["forwards_without_host_lengths"]
    assert unread[2] == unread[0] <= 1, unread  # the one: the model card's widget encode, outside training
    assert_trained_alike(weights[2], weights[0], no_dropout_model_dir)
