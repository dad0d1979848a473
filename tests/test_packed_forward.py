"""The packed forward (training.packed_forward, issue 14 item 4): the encoder's position-wise layers
on real tokens only, attention per row with the padding mask. Same outputs, losses, gradients and
trained weights as the plain forward, on a real batch."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import WORDS, assert_trained_alike, three_step_run
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses

from matryoshka_train.models import packed_forward


def _texts(n: int, seed: int, low: int = 1, high: int = 30) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def _copy(features: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in features.items()}


def test_outputs_equal_the_plain_forward_and_only_real_tokens_run(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu").eval()
    features = model.preprocess(_texts(16, seed=1))
    with torch.no_grad():
        plain = model(_copy(features))
        patched = packed_forward.install(model)
        assert patched is not None
        packed = model(_copy(features))
        packed_forward.uninstall(model, patched)
    assert "forward" not in model[0].auto_model.__dict__
    assert model[0].auto_model.config._attn_implementation != packed_forward.IMPLEMENTATION
    mask = plain["attention_mask"].bool()
    assert patched.run_tokens == int(mask.sum()) < patched.padded_tokens
    torch.testing.assert_close(packed["sentence_embedding"], plain["sentence_embedding"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed["token_embeddings"][mask], plain["token_embeddings"][mask], atol=1e-5, rtol=1e-4)
    assert packed["token_embeddings"].shape == plain["token_embeddings"].shape


@pytest.mark.parametrize("loss_name", ["mnrl", "cosent"])
def test_loss_and_gradients_equal_the_plain_forward(tiny_model_dir, loss_name):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu").eval()  # no dropout: comparable numbers
    if loss_name == "cosent":
        inner, columns, labels = losses.CoSENTLoss(model), 2, torch.rand(16)
    else:
        inner, columns, labels = losses.MultipleNegativesRankingLoss(model), 3, None
    loss = losses.MatryoshkaLoss(model, inner, [32, 16, 8])
    features = [model.preprocess(_texts(16, seed=10 + c)) for c in range(columns)]

    plain = _value_and_grads(model, loss, features, labels)
    patched = packed_forward.install(model)
    packed = _value_and_grads(model, loss, features, labels)
    packed_forward.uninstall(model, patched)
    _assert_same(packed, plain)


def _value_and_grads(model, loss, features: list[dict], labels) -> tuple[float, dict]:
    model.zero_grad()
    value = loss([_copy(f) for f in features], labels)
    value.backward()
    return value.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(packed: tuple[float, dict], plain: tuple[float, dict]) -> None:
    assert packed[0] == pytest.approx(plain[0], rel=1e-5)
    assert plain[1].keys() == packed[1].keys()
    for name, grad in plain[1].items():
        torch.testing.assert_close(packed[1][name], grad, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_roberta_style_positions_from_padding_idx_give_equal_outputs(kind, tiny_model_dir, tmp_path):
    """RoBERTa and XLM-R count positions from padding_idx + 1; a tiny one of each, built here."""
    import shutil

    from sentence_transformers.sentence_transformer import modules
    from transformers import RobertaConfig, RobertaModel, XLMRobertaConfig, XLMRobertaModel

    config_cls, model_cls = (RobertaConfig, RobertaModel) if kind == "roberta" else (XLMRobertaConfig, XLMRobertaModel)
    torch.manual_seed(0)
    hf_dir = tmp_path / kind
    model_cls(config_cls(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=130, pad_token_id=0)).save_pretrained(hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, hf_dir / name)
    model = SentenceTransformer(modules=[modules.Transformer(str(hf_dir), max_seq_length=64),
                                         modules.Pooling(32, pooling_mode="mean")], device="cpu").eval()
    features = model.preprocess(_texts(12, seed=4))
    with torch.no_grad():
        plain = model(_copy(features))["sentence_embedding"]
        patched = packed_forward.install(model)
        assert patched is not None
        packed = model(_copy(features))["sentence_embedding"]
        packed_forward.uninstall(model, patched)
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-4)


def test_positions_count_within_each_row(tiny_model_dir, monkeypatch):
    """The check above can fail: positions shifted by 3 give other embeddings."""
    model = SentenceTransformer(str(tiny_model_dir), device="cpu").eval()
    features = model.preprocess(_texts(8, seed=3))
    with torch.no_grad():
        plain = model(_copy(features))["sentence_embedding"]
        monkeypatch.setattr(packed_forward, "_position_offset", lambda m: 3)
        patched = packed_forward.install(model)
        shifted = model(_copy(features))["sentence_embedding"]
        packed_forward.uninstall(model, patched)
    assert (shifted - plain).abs().max() > 1e-3


def test_unsupported_models_are_left_alone(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    model[0].tokenizer.padding_side = "left"
    assert packed_forward.supported(model[0].auto_model, model[0].tokenizer) == "the tokenizer pads on the left"
    assert packed_forward.install(model) is None and "forward" not in model[0].auto_model.__dict__


def test_a_run_with_it_ends_with_the_weights_of_a_run_without(tiny_config, no_dropout_model_dir, tmp_path):
    weights = {}
    for packed in (False, True):
        results, weights[packed] = three_step_run(tiny_config, no_dropout_model_dir, tmp_path / f"p{packed}",
                                                  rotation=False, packed_forward=packed, sorted_forward=False)
        assert results["speed"]["packed_forward"] is packed
        if packed:  # results.json says what ran: real tokens only, attention padded on a CPU
            padding = results["padding"]
            assert padding["attention"] == "padded" and padding["pad_share_run"] == 0.0
            assert padding["attention_why"] == "not on a CUDA device"
            assert padding["padded_tokens_plain"] > padding["padded_tokens_run"] == padding["real_tokens"] > 0
    assert_trained_alike(weights[True], weights[False], no_dropout_model_dir)


def test_check_prints_it_and_auto_leaves_it_off(write_config, tiny_config, capsys):
    from matryoshka_train.cli import main

    assert main(["check", str(write_config(tiny_config))]) == 0
    assert "packed_forward: off (auto: measured 0.69x the sorted forward on CPU" in capsys.readouterr().out


def test_a_model_it_cannot_run_trains_plain_and_says_why(tiny_config, monkeypatch):
    import copy

    from matryoshka_train.config import validate
    from matryoshka_train.training.entry import run

    monkeypatch.setattr(packed_forward, "why_not", lambda model: "model type 'mpnet' not verified")
    cfg = copy.deepcopy(tiny_config)
    cfg["training"].update(max_steps=1, packed_forward=True)
    cfg["evaluation"] = {"evaluators": []}
    lines = []
    results = run(validate(cfg), echo=lines.append)
    assert results["train"]["steps"] == 1
    assert "packed_forward: not used for this model (model type 'mpnet' not verified); the plain forward runs" in lines
    assert results["speed"]["packed_forward"] is False  # the record says what ran


def test_auto_falls_back_to_padded_where_the_varlen_kernel_cannot_run(tiny_config, monkeypatch):
    """auto turns the packed forward on only where its attention runs on the varlen kernel; a machine
    whose kernel fails the probe (an older torch, a build without flash kernels) gets the padded
    forward. A CPU stands in for such a machine here: auto is made to choose packed on it."""
    import copy

    from matryoshka_train.config import validate
    from matryoshka_train.training import speed
    from matryoshka_train.training.entry import run

    monkeypatch.setattr(speed, "_packed_auto", lambda *args: (True, "measured faster (stand-in)"))
    cfg = copy.deepcopy(tiny_config)
    cfg["training"].update(max_steps=1)
    cfg["evaluation"] = {"evaluators": []}
    lines = []
    results = run(validate(cfg), echo=lambda text: lines.append(str(text)))
    assert results["train"]["steps"] == 1
    assert "packed_forward (auto): off, not on a CUDA device; the padded forward runs" in lines
    assert results["speed"]["packed_forward"] is False and results.get("padding") is None
    assert results["speed"]["merge_columns"] is False  # chosen for the packed forward: off with it
    cfg["training"]["packed_forward"] = True  # asked for by name: kept, attention padded per row
    cfg["training"]["output_dir"] += "-named"
    results = run(validate(cfg), echo=lambda _: None)
    assert results["speed"]["packed_forward"] is True and results["padding"]["attention"] == "padded"


def test_gradient_cache_losses_get_it_on_a_gpu_too(tiny_config, monkeypatch):
    """CachedMNRL's mini-batches measured 1.59x with the packed forward (H200): auto turns it on for
    them as for the plain losses, and says why for the Cached* case."""
    from matryoshka_train.config import validate
    from matryoshka_train.training import plan as plan_module

    real, seen = plan_module.decide, []
    monkeypatch.setattr(plan_module, "decide",
                        lambda training, **kw: seen.append(kw["gradient_cache"]) or real(training, "cuda", **kw))
    for loss, cached in (("cached_mnrl", True), ("mnrl", False)):
        speed = plan_module.speed_plan(validate({**tiny_config, "loss": {"name": loss}}), "bf16")
        assert speed.packed_forward
        assert ("gradient-cache" in speed.reasons["packed_forward"]) is cached
    assert seen == [True, False]


def _reference_varlen(calls: list):
    """A CPU stand-in for flash attention's varlen kernel: plain attention over each row's span of
    the packed tokens, as ``cu_seqlens`` marks them. Checks the wiring (boundaries, layouts, scale)
    that the GPU kernel gets; the kernel itself is measured by the GPU suite."""
    import torch.nn.functional as F

    def attend(query, key, value, cu_seqlens, longest, dropout, scale):
        bounds = cu_seqlens.tolist()
        calls.append((bounds, longest, dropout))
        assert query.shape == key.shape == value.shape and query.shape[0] == bounds[-1]
        spans = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            q, k, v = (x[start:end].transpose(0, 1)[None] for x in (query, key, value))  # [1, h, L, d]
            spans.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale)[0].transpose(0, 1))
        return torch.cat(spans)

    return attend


def test_varlen_attention_gets_each_rows_boundaries_and_gives_the_plain_loss_and_gradients(
        tiny_model_dir, monkeypatch):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu").eval()
    loss = losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), [32, 16, 8])
    features = [model.preprocess(_texts(12, seed=40 + c)) for c in range(3)]

    plain = _value_and_grads(model, loss, features, None)
    calls: list = []
    monkeypatch.setattr(packed_forward, "varlen_unavailable", lambda device, dtype, head_size: None)
    monkeypatch.setattr(packed_forward, "flash_varlen", _reference_varlen(calls))
    patched = packed_forward.install(model)
    packed = _value_and_grads(model, loss, features, None)
    packed_forward.uninstall(model, patched)

    layers = model[0].auto_model.config.num_hidden_layers
    # every layer of every forward (the loss may embed some columns together)
    assert patched.attention == "varlen" and len(calls) >= 2 * layers and len(calls) % layers == 0
    lengths = features[0]["attention_mask"].sum(dim=1).tolist()
    bounds, longest, dropout = calls[0]
    assert bounds == [0, *torch.tensor(lengths).cumsum(0).tolist()] and longest == max(lengths) and dropout == 0.0
    _assert_same(packed, plain)


def test_varlen_is_refused_off_cuda_and_attention_runs_padded(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu").eval()
    assert packed_forward.varlen_unavailable(torch.device("cpu"), torch.bfloat16, 64) == "not on a CUDA device"
    cuda = torch.device("cuda")  # the checks before any device query
    assert packed_forward.varlen_unavailable(cuda, torch.float32, 64).startswith("torch.float32 (flash attention")
    assert "head size 12" in packed_forward.varlen_unavailable(cuda, torch.bfloat16, 12)
    patched = packed_forward.install(model)
    with torch.no_grad():
        model(model.preprocess(_texts(4, seed=3)))
    packed_forward.uninstall(model, patched)
    assert patched.attention == "padded"


def test_the_varlen_probe_says_why_a_kernel_that_fails_is_not_used(monkeypatch):
    """The one-off probe: a kernel that works gives None (also from inside no_grad, as in an eval
    forward); one that fails gives the reason, so attention runs padded instead of the run failing."""
    cpu = torch.device("cpu")
    packed_forward.varlen_probe.cache_clear()
    monkeypatch.setattr(packed_forward, "flash_varlen", _reference_varlen([]))
    with torch.no_grad():
        assert packed_forward.varlen_probe(cpu, torch.float32, 16) is None

    def broken(*args, **kwargs):
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.\nmore")

    packed_forward.varlen_probe.cache_clear()
    monkeypatch.setattr(packed_forward, "flash_varlen", broken)
    why = packed_forward.varlen_probe(cpu, torch.float32, 16)
    assert why == "the varlen kernel failed here (RuntimeError: FlashAttention only supports Ampere GPUs or newer.)"
    packed_forward.varlen_probe.cache_clear()


def test_auto_is_off_on_a_gpu_for_a_model_it_cannot_run(tiny_config, monkeypatch):
    """`mtrain check` and the run's plan know the model: a StaticEmbedding (say) on a GPU gets the
    padded forward from the start, with the reason, rather than a note at the first step."""
    from matryoshka_train.config import validate
    from matryoshka_train.training import plan as plan_module

    real = plan_module.decide
    monkeypatch.setattr(plan_module, "decide", lambda training, **kw: real(training, "cuda", **kw))
    config = validate({**tiny_config, "training": {**tiny_config["training"], "precision": "bf16"}})
    static = torch.nn.Sequential(torch.nn.EmbeddingBag(10, 4))  # no transformer encoder first, like a StaticEmbedding
    speed = plan_module.speed_plan(config, "bf16", model=static)
    assert speed.packed_forward is False
    assert "not for this model (no transformer encoder first)" in speed.reasons["packed_forward"]
    assert plan_module.speed_plan(config, "bf16").packed_forward is True  # without the model: the device's answer


def test_evaluation_during_training_runs_through_it(tiny_config, no_dropout_model_dir, tmp_path, monkeypatch):
    """The packed forward stays installed for the whole of training, so the evaluators at eval steps
    encode through it too (no gradients, the model's own dtype). Their figures match a run without it."""
    import json

    import torch

    real, no_grad_calls = packed_forward.PackedForward.__call__, []

    def counting(self, *args, **kwargs):
        no_grad_calls.append(not torch.is_grad_enabled())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(packed_forward.PackedForward, "__call__", counting)
    evals = {}
    for packed in (False, True):
        results, _ = three_step_run(tiny_config, no_dropout_model_dir, tmp_path / f"e{packed}", rotation=False,
                                    evaluators=True, packed_forward=packed, sorted_forward=False,
                                    eval_strategy="steps", eval_steps=1)
        assert results["speed"]["packed_forward"] is packed
        lines = (tmp_path / f"e{packed}" / "metrics.jsonl").read_text().splitlines()
        evals[packed] = [e for e in map(json.loads, lines) if e.get("event") == "eval"]
    assert any(no_grad_calls) and not all(no_grad_calls)  # training steps and evaluations both ran packed
    assert [e["step"] for e in evals[True]] == [e["step"] for e in evals[False]] == [1, 2, 3]
    for with_it, without in zip(evals[True], evals[False]):
        assert with_it["eval_loss"] == pytest.approx(without["eval_loss"], rel=1e-4)
        accuracy = [k for k in without if k.endswith("cosine_accuracy")]
        assert accuracy and all(with_it[k] == pytest.approx(without[k], abs=1e-6) for k in accuracy)
