"""The learned orthogonal rotation (matryoshka.rotation, issue 17's rotation lever): the gradient
split, the orthogonality, the PCA start, and a run whose saved model loads with plain
sentence-transformers."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import triplet_batch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules.dense import Dense

from matryoshka_train.config import LossConfig, MatryoshkaConfig, validate
from matryoshka_train.losses import build_loss
from matryoshka_train.models.rotation import (
    Decoupling,
    add_rotation,
    find_rotation,
    orthogonalize,
    part_way,
    pca_rotation,
    rotation_summary,
)
from matryoshka_train.training.entry import run

DIMS = [32, 16, 8]


def _rotated(tiny_model_dir, decouple=True):
    model = SentenceTransformer(str(tiny_model_dir))
    model.eval()  # no dropout: two forwards give the same numbers
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))
    name = add_rotation(model, q)
    dense = getattr(model, name)
    if decouple:
        Decoupling(dense)
    return model, dense


def _grads(model, dense, loss, batch):
    model.zero_grad()
    out = loss(batch, None)
    sum(out.values()).backward()
    encoder = sum(p.grad.abs().sum().item() for n, p in model.named_parameters()
                  if p.grad is not None and not n.startswith(f"{_name(model, dense)}."))
    rotation = dense.linear.weight.grad
    return encoder, (0.0 if rotation is None else rotation.abs().sum().item())


def _name(model, dense):
    return next(n for n, m in model.named_children() if m is dense)


@pytest.mark.parametrize("name", ["mnrl", "cmnrl"])
def test_full_size_term_trains_the_encoder_only_and_small_dims_the_rotation_only(tiny_model_dir, data_dir, name):
    model, dense = _rotated(tiny_model_dir)
    kwargs = {"mini_batch_size": 4} if name == "cmnrl" else {}
    batch = triplet_batch(model, data_dir)
    full_only = build_loss(model, LossConfig(name=name, kwargs=kwargs), MatryoshkaConfig(dims=[32]), [32],
                           rotation=dense)
    encoder, rotation = _grads(model, dense, full_only, batch)
    assert encoder > 0 and rotation == 0.0
    small_only = build_loss(model, LossConfig(name=name, kwargs=kwargs), MatryoshkaConfig(dims=[16, 8]), [16, 8],
                            rotation=dense)
    encoder, rotation = _grads(model, dense, small_only, batch)
    assert encoder == 0.0 and rotation > 0


def test_without_decoupling_every_term_trains_everything(tiny_model_dir, data_dir):
    model, dense = _rotated(tiny_model_dir, decouple=False)
    loss = build_loss(model, LossConfig(name="mnrl"), MatryoshkaConfig(dims=[16, 8]), [16, 8])
    encoder, rotation = _grads(model, dense, loss, triplet_batch(model, data_dir))
    assert encoder > 0 and rotation > 0


def test_decoupled_loss_has_the_same_value_as_the_plain_one(tiny_model_dir, data_dir):
    model, dense = _rotated(tiny_model_dir, decouple=False)
    batch = triplet_batch(model, data_dir)
    plain = build_loss(model, LossConfig(name="mnrl"), MatryoshkaConfig(dims=DIMS), DIMS)
    expected = {k: v.item() for k, v in plain(batch, None).items()}
    Decoupling(dense)
    split = build_loss(model, LossConfig(name="mnrl"), MatryoshkaConfig(dims=DIMS), DIMS, rotation=dense)
    got = {k: v.item() for k, v in split(batch, None).items()}
    assert got == pytest.approx(expected, rel=1e-5)


def test_rotation_keeps_every_full_size_cosine_and_the_saved_module_is_a_plain_dense(tiny_model_dir, tmp_path):
    base = SentenceTransformer(str(tiny_model_dir))
    texts = ["a river in winter", "coffee with pepper", "the engine of a rocket", "a violin in the garden"]
    before = base.similarity(base.encode(texts), base.encode(texts))
    model, _ = _rotated(tiny_model_dir)
    model.save(str(tmp_path / "m"))
    types = [m["type"] for m in json.loads((tmp_path / "m" / "modules.json").read_text())]
    assert types[-1] == "sentence_transformers.base.modules.dense.Dense"
    loaded = SentenceTransformer(str(tmp_path / "m"))
    after = loaded.similarity(loaded.encode(texts), loaded.encode(texts))
    assert torch.allclose(before, after, atol=1e-5)
    assert not torch.allclose(torch.as_tensor(base.encode(texts)), torch.as_tensor(loaded.encode(texts)), atol=1e-3)
    assert find_rotation(loaded) is not None


def test_orthogonalize_pulls_a_perturbed_weight_back():
    dense = Dense(16, 16, bias=False, activation_function=None)
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    with torch.no_grad():
        dense.linear.weight.copy_(q + 1e-3 * torch.randn(16, 16))
    orthogonalize(dense)
    w = dense.linear.weight
    assert (w @ w.T - torch.eye(16)).abs().max().item() < 1e-5


def test_pca_rotation_orders_directions_by_variance():
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.1, 5.0, 1.0, 0.5])
    x = torch.randn(500, 4, generator=gen) * scales
    w = pca_rotation(x)
    assert torch.allclose(w @ w.T, torch.eye(4), atol=1e-5)
    variances = (x @ w.T).var(dim=0)
    assert list(variances) == sorted(variances, reverse=True)
    assert abs(w[0, 1].item()) > 0.99  # the widest axis comes first


@pytest.mark.parametrize("reflection", [False, True])
def test_part_way_rotation_is_orthogonal_and_two_halves_make_the_whole(reflection):
    gen = torch.Generator().manual_seed(1)
    w = pca_rotation(torch.randn(300, 12, generator=gen) * torch.linspace(3.0, 0.1, 12))
    if (torch.linalg.det(w) < 0) != reflection:
        w[-1] = -w[-1]
    half = part_way(w, 0.5)
    assert torch.allclose(half @ half.T, torch.eye(12), atol=1e-5)
    whole = half @ half
    assert torch.allclose(whole[:-1], w[:-1], atol=1e-4)  # the last row is negated for a reflection
    assert torch.allclose(whole[-1].abs(), w[-1].abs(), atol=1e-4)
    assert not torch.allclose(half, w, atol=1e-2) and not torch.allclose(half, torch.eye(12), atol=1e-2)
    assert torch.equal(part_way(w, 1.0), w) and torch.equal(part_way(w, 0.0), torch.eye(12))


def test_pca_fraction_starts_the_rotation_part_way_and_results_record_it(tiny_config):
    from matryoshka_train.training.plan import build_plan

    weights = {}
    for fraction in (1.0, 0.5):
        cfg = copy.deepcopy(tiny_config)
        cfg["matryoshka"]["rotation"] = {"enabled": True, "pca_fraction": fraction}
        plan = build_plan(validate(cfg), echo=lambda _: None)
        weights[fraction] = plan.rotation.linear.weight.detach().clone()
    half = weights[0.5]
    assert torch.allclose(half @ half.T, torch.eye(32), atol=1e-4)
    assert torch.allclose((half @ half)[:-1], weights[1.0][:-1], atol=1e-3)
    assert rotation_summary(plan.rotation, plan.config.matryoshka.rotation)["pca_fraction"] == 0.5


def test_run_with_frozen_encoder_trains_only_the_rotation_and_keeps_full_size(tiny_config, tiny_model_dir, tmp_path):
    """Everything but the rotation frozen: full-size similarities stay the base model's exactly,
    the truncated ones change, and the saved model loads back with plain sentence-transformers."""
    cfg = copy.deepcopy(tiny_config)
    cfg["matryoshka"]["rotation"] = {"enabled": True, "decouple": True, "learning_rate": 0.05}
    cfg["training"].update(freeze_embeddings=True, freeze_layers=2, max_steps=6)
    results = run(validate(cfg), echo=lambda _: None)
    assert results["rotation"]["orthogonality_error"] < 1e-4
    out = tmp_path / "out"
    base, trained = SentenceTransformer(str(tiny_model_dir)), SentenceTransformer(str(out))
    texts = ["river mountain coffee", "engine violin garden", "winter harbor pepper", "rocket tiger lantern"]
    full_before = base.similarity(base.encode(texts), base.encode(texts))
    full_after = trained.similarity(trained.encode(texts), trained.encode(texts))
    assert torch.allclose(full_before, full_after, atol=1e-4)
    start = SentenceTransformer(str(tiny_model_dir))
    dense = find_rotation(trained)[1]
    w = dense.linear.weight.detach()
    assert (w @ w.T - torch.eye(32)).abs().max().item() < 1e-4
    emb = torch.as_tensor(start.encode(texts))
    small_trained = torch.nn.functional.normalize(torch.as_tensor(trained.encode(texts))[:, :8], dim=-1)
    small_base = torch.nn.functional.normalize(emb[:, :8], dim=-1)
    assert not torch.allclose(small_trained, small_base, atol=1e-3)


def test_rotation_with_distillation_loss_is_refused(tiny_config, data_dir):
    from matryoshka_train.training.check import check

    cfg = copy.deepcopy(tiny_config)
    source = {"path": str(data_dir / "distill.jsonl")}
    cfg["datasets"] = [{"name": "d", "source": source, "columns": ["sentence", "label"]}]
    cfg["loss"] = {"name": "mse"}
    cfg["evaluation"] = {"evaluators": []}
    cfg["matryoshka"]["rotation"] = {"enabled": True}
    report = check(validate(cfg))
    assert any("turn matryoshka.rotation off for distillation" in str(p) for p in report.problems)


def test_bypassed_rotation_scores_the_base_model_and_restores_the_weight(tiny_model_dir):
    from matryoshka_train.models.rotation import bypassed

    texts = ["a river in winter", "coffee with pepper"]
    base = torch.as_tensor(SentenceTransformer(str(tiny_model_dir)).encode(texts))
    model, dense = _rotated(tiny_model_dir)
    kept = dense.linear.weight.detach().clone()
    with bypassed(dense):
        assert torch.allclose(torch.as_tensor(model.encode(texts)), base, atol=1e-5)
    assert torch.equal(dense.linear.weight.detach(), kept)
    assert not torch.allclose(torch.as_tensor(model.encode(texts)), base, atol=1e-3)


def test_decoupled_rotation_under_several_processes_is_refused_up_front(tiny_config, monkeypatch):
    from matryoshka_train.training.prepare import config_problems

    cfg = copy.deepcopy(tiny_config)
    cfg["matryoshka"]["rotation"] = {"enabled": True, "decouple": True}
    assert not config_problems(validate(cfg))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert any("runs on one process only" in str(p) for p in config_problems(validate(cfg)))
    cfg["matryoshka"]["rotation"]["decouple"] = False  # a plain module under DDP: allowed
    assert not config_problems(validate(cfg))


# --------------------------------------------------------------------------------------------
# the default: rotation `auto` (issue 17 item 4: the measured best is what a config gets)


def test_a_config_without_the_quality_keys_trains_with_the_rotation_on(tiny_config, tmp_path):
    """tiny_config sets no matryoshka.rotation, reduction or anchor: the resolved config says auto,
    the run adds the rotation, records why, and the saved model ends in it."""
    config = validate(tiny_config)
    assert config.matryoshka.rotation.enabled == "auto"
    assert (config.matryoshka.reduction, config.anchor.weight) == ("sum", 0.0)
    lines = []
    results = run(config, echo=lines.append)
    assert results["rotation"]["enabled"] is True and results["rotation"]["why"].startswith("auto:")
    assert results["rotation"]["decouple"] is False and results["rotation"]["orthogonality_error"] < 1e-4
    assert any(line.startswith("Rotation: 32×32, started from the principal directions") for line in lines)
    assert config.matryoshka.rotation.pca_fraction == 0.5  # the start half-way to PCA
    assert results["rotation"]["pca_fraction"] == 0.5
    assert any("(0.5 of the way from no rotation)" in line for line in lines)
    saved = SentenceTransformer(str(tmp_path / "out"))
    assert find_rotation(saved) is not None
    assert config.training.layerwise_lr_decay == "auto"  # and with the rotation comes the layer-wise decay
    assert results["layerwise_lr_decay"]["value"] == 0.5 and results["layerwise_lr_decay"]["why"].startswith("auto:")
    assert config.matryoshka.weights == "auto"  # and the smaller half of the dims weigh double
    assert config.matryoshka.dims == [32, 16, 8]
    assert results["matryoshka_weights"]["value"] == [1, 2, 2]
    assert results["matryoshka_weights"]["why"].startswith("auto:")


def test_auto_dim_weights_reach_the_loss_and_a_config_value_wins(tiny_config):
    """`auto` with the rotation on: the loss weighs the smaller half of the dims (the middle one
    included) 2; null is all 1; a list is used as given; without the rotation `auto` is all 1."""
    from matryoshka_train.training.plan import build_plan
    from matryoshka_train.training.prepare import dim_weights_decision

    def loss_weights(cfg):
        plan = build_plan(validate(cfg), echo=lambda _: None)
        (loss,) = plan.losses.values()
        return list(loss.matryoshka_weights), plan.dim_weights

    assert loss_weights(tiny_config) == ([1.0, 2.0, 2.0], [1.0, 2.0, 2.0])
    cfg = copy.deepcopy(tiny_config)
    cfg["matryoshka"]["weights"] = None
    assert loss_weights(cfg) == ([1.0, 1.0, 1.0], None)
    cfg["matryoshka"]["weights"] = [3, 1, 1]
    assert loss_weights(cfg) == ([3.0, 1.0, 1.0], [3, 1, 1])
    cfg["matryoshka"]["weights"] = "auto"
    cfg["matryoshka"]["reduction"] = "mean"
    assert loss_weights(cfg)[0] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    cfg["matryoshka"]["rotation"] = {"enabled": False}
    assert loss_weights(cfg)[1] is None
    assert dim_weights_decision(validate(cfg), [32, 16, 8]) == (
        None, "auto: all 1; the weighting was measured with the learned rotation, which is off here")
    seven = dim_weights_decision(validate(tiny_config), [384, 256, 128, 64, 32, 16, 8])[0]
    assert seven == [1, 1, 1, 2, 2, 2, 2]  # the measured variant (docs/quality.md: ...-small2)


def test_auto_layerwise_decay_hands_the_trainer_lower_rates_for_lower_layers(tiny_config):
    """With the rotation on, `auto` gives the trainer a rate per layer: the top layer the configured
    rate, each one below 0.5x the one above, the embeddings lowest; a number set in the config wins."""
    from matryoshka_train.training.arguments import training_arguments
    from matryoshka_train.training.plan import build_plan

    config = validate(tiny_config)
    lr = config.training.learning_rate
    mapping = training_arguments(build_plan(config, echo=lambda _: None)).learning_rate_mapping
    decays = [lr, 0.5 * lr, 0.5**2 * lr]  # 2 layers, then the embeddings
    assert sorted(mapping.values(), reverse=True) == pytest.approx(decays)
    cfg = copy.deepcopy(tiny_config)
    cfg["training"]["layerwise_lr_decay"] = 0.8  # not auto's value: the configured number wins
    mapping = training_arguments(build_plan(validate(cfg), echo=lambda _: None)).learning_rate_mapping
    assert sorted(mapping.values(), reverse=True) == pytest.approx([lr, 0.8 * lr, 0.64 * lr])
    cfg["training"]["layerwise_lr_decay"] = None
    assert not training_arguments(build_plan(validate(cfg), echo=lambda _: None)).learning_rate_mapping


def test_auto_layerwise_decay_keeps_one_rate_without_the_rotation_or_without_layers(tiny_config):
    from matryoshka_train.training.prepare import layerwise_decay_decision

    cfg = copy.deepcopy(tiny_config)
    cfg["matryoshka"] = {**cfg.get("matryoshka", {}), "rotation": {"enabled": False}}
    assert layerwise_decay_decision(validate(cfg)) == (
        None, "auto: one rate; the decay was measured with the learned rotation, which is off here")
    static = torch.nn.Sequential(torch.nn.EmbeddingBag(10, 4))  # parameter '0.weight': no transformer layers
    decay, why = layerwise_decay_decision(validate(tiny_config), static)
    assert decay is None and "no transformer layers" in why
    assert layerwise_decay_decision(validate(tiny_config))[0] == 0.5


@pytest.mark.parametrize(
    "change, why",
    [
        ({"matryoshka": {"dims": [32, 16, 8], "rotation": {"enabled": False}}}, "set in the config"),
        ({"matryoshka": {"dims": [32]}}, "single dim"),
        ({"matryoshka": {"dims": [32, 16], "wrapper": "matryoshka_2d"}}, "wrapper 'matryoshka_2d'"),
        ({"loss": {"name": "mnrl", "matryoshka": False}}, "without the Matryoshka wrapper"),
        ({"model": {"lora": {"r": 4}}}, "LoRA"),
    ],
)
def test_auto_turns_the_rotation_off_where_it_does_not_apply(tiny_config, change, why):
    from matryoshka_train.training.prepare import rotation_decision

    cfg = copy.deepcopy(tiny_config)
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    on, reason = rotation_decision(validate(cfg))
    assert not on and why in reason


def test_auto_turns_the_rotation_off_for_distillation_without_a_problem(tiny_config, data_dir):
    from matryoshka_train.training.check import check
    from matryoshka_train.training.prepare import rotation_decision

    cfg = copy.deepcopy(tiny_config)
    cfg["datasets"] = [{"name": "d", "source": {"path": str(data_dir / "distill.jsonl")},
                        "columns": ["sentence", "label"]}]
    cfg["loss"] = {"name": "mse"}
    cfg["evaluation"] = {"evaluators": []}
    config = validate(cfg)
    on, reason = rotation_decision(config)
    assert not on and "teacher embeddings" in reason
    assert not any("rotation" in str(p) for p in check(config).problems)


def test_check_prints_the_rotation_decision(write_config, tiny_config, capsys):
    from matryoshka_train.cli import main

    assert main(["check", str(write_config(tiny_config))]) == 0
    out = capsys.readouterr().out
    assert "Rotation (matryoshka.rotation): on (auto:" in out
    assert "; starts 0.5 of the way from no rotation to the PCA rotation of training texts" in out
    assert "Layer-wise LR decay (training.layerwise_lr_decay): 0.5 (auto: with the learned rotation" in out
    assert "Dim weights (matryoshka.weights): [1, 2, 2] (auto: with the learned rotation, the smaller half" in out


def test_auto_leaves_an_anchored_run_unrotated_and_an_explicit_rotation_with_an_anchor_is_refused(tiny_config):
    from matryoshka_train.training.prepare import config_problems, rotation_decision

    cfg = copy.deepcopy(tiny_config)
    cfg["anchor"] = {"weight": 10}
    on, reason = rotation_decision(validate(cfg))
    assert not on and "anchor" in reason and not config_problems(validate(cfg))
    cfg["matryoshka"]["rotation"] = {"enabled": True}
    assert any("an anchor pulls toward the unrotated reference" in str(p) for p in config_problems(validate(cfg)))


def _texts_file(path, texts, key="text"):
    path.write_text("".join(json.dumps({key: t, "n": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return str(path)


def test_pca_source_fits_the_start_on_its_own_texts(tiny_config, tiny_model_dir, tmp_path):
    """matryoshka.rotation.pca_source: the start is the PCA rotation of the base model's embeddings of
    that file's texts (not the training texts), and results.json says where the texts came from."""
    from matryoshka_train.training.plan import build_plan

    places = ("north", "river", "old")
    texts = [f"report {i}: {w} near the {v} station"
             for i, (w, v) in enumerate((w, v) for w in ("floods", "fire", "strike", "storm", "crash") for v in places)]
    path = _texts_file(tmp_path / "domain.jsonl", texts)
    cfg = copy.deepcopy(tiny_config)
    cfg["matryoshka"]["rotation"] = {"enabled": True, "pca_fraction": 1.0, "pca_source": {"path": path},
                                     "pca_training_share": 0}
    lines = []
    plan = build_plan(validate(cfg), echo=lines.append)
    base = SentenceTransformer(str(tiny_model_dir), device="cpu")
    expected = pca_rotation(base.encode(texts, convert_to_tensor=True, normalize_embeddings=True).float().cpu())
    got = plan.rotation.linear.weight.detach()
    # principal directions are defined up to sign: compare row by row, up to it
    assert torch.allclose((got * expected).sum(1).abs(), torch.ones(32), atol=1e-3)
    cfg["matryoshka"]["rotation"] = {"enabled": True, "pca_fraction": 1.0}
    from_training = build_plan(validate(cfg), echo=lambda _: None).rotation.linear.weight.detach()
    assert not torch.allclose((got * from_training).sum(1).abs(), torch.ones(32), atol=1e-2)
    assert any(f"principal directions of {len(texts)} texts of {path}" in line for line in lines)
    assert rotation_summary(plan.rotation, plan.config.matryoshka.rotation)["pca_texts_from"] == path
    summary = rotation_summary(plan.rotation, validate(cfg).matryoshka.rotation)
    assert summary["pca_texts_from"] == "training texts" and summary["pca_training_share"] is None


def test_pca_training_share_mixes_in_as_many_training_texts_by_default(tiny_config, tmp_path):
    """pca_training_share 0.5 (the default with a pca_source): the start is fit on the source's texts
    plus as many training texts; 0.75 on three training texts per source text."""
    from matryoshka_train.training.plan import pca_start_texts
    from matryoshka_train.training.prepare import prepare

    domain = [f"domain line {i}" for i in range(6)]
    path = _texts_file(tmp_path / "domain.jsonl", domain)
    for share, own in ((0.5, 6), (0.75, 18), (0.0, 0)):
        cfg = copy.deepcopy(tiny_config)
        cfg["matryoshka"]["rotation"] = {"pca_source": {"path": path}, "pca_training_share": share}
        texts, whose = pca_start_texts(prepare(validate(cfg), echo=lambda _: None))
        assert texts[own:] == domain and len(texts) == own + 6
        assert not set(texts[:own]) & set(domain)
        assert whose == (f"texts: {own} training texts and 6 of {path}" if own else f"texts of {path}")


def test_check_names_the_pca_source_and_a_bad_one_is_one_clear_problem(write_config, tiny_config, tmp_path, capsys):
    from matryoshka_train.cli import main

    cfg = copy.deepcopy(tiny_config)
    path = _texts_file(tmp_path / "domain.jsonl", ["one text here", "another text there", "a third one"])
    cfg["matryoshka"]["rotation"] = {"pca_source": {"path": path}}
    assert main(["check", str(write_config(cfg))]) == 0
    out = capsys.readouterr().out
    assert f"to the PCA rotation of the texts of {path} with training texts (0.5 of the whole)" in out
    assert f"3 distinct from {path}" in out

    for source, columns, says in (
        ({"path": str(tmp_path / "missing.jsonl")}, None, "file not found"),
        ({"path": path}, ["body"], "column(s) body not in"),
        ({"path": _texts_file(tmp_path / "one.jsonl", ["same", "same"])}, None, "holds 1 distinct text(s)"),
    ):
        cfg["matryoshka"]["rotation"] = {"pca_source": source, "pca_columns": columns}
        assert main(["run", str(write_config(cfg))]) != 0
        err = capsys.readouterr().err
        assert says in err and "matryoshka.rotation.pca" in err and "Traceback" not in err


def test_pca_source_without_the_pca_start_is_refused_and_with_the_rotation_off_is_a_warning(tiny_config, tmp_path):
    from matryoshka_train.errors import ConfigError
    from matryoshka_train.training.check import check

    cfg = copy.deepcopy(tiny_config)
    cfg["matryoshka"]["rotation"] = {"init": "identity", "pca_source": {"path": "x.jsonl"}}
    with pytest.raises(ConfigError, match="set init: pca"):
        validate(cfg)
    path = _texts_file(tmp_path / "domain.jsonl", ["one text here", "another text there"])
    cfg["matryoshka"]["rotation"] = {"enabled": False, "pca_source": {"path": path}}
    report = check(validate(cfg))
    assert report.ok
    assert any("pca_source is set but the rotation is off" in w for w in report.warnings)
    from matryoshka_train.training.prepare import prepare

    printed = []
    prepare(validate(cfg), echo=printed.append)  # as run prepares: printed, not only listed
    assert any(line.startswith("Warning: matryoshka.rotation.pca_source is set but the rotation is off")
               for line in printed)
