"""matryoshka.similarity_weight (issue 17): each smaller dim's pairwise cosines pulled toward the
full-size ones by 1 − Pearson correlation, in the plain and the gradient-cache loss alike."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import triplet_batch
from sentence_transformers import SentenceTransformer

from matryoshka_train.config import LossConfig, MatryoshkaConfig, validate
from matryoshka_train.losses import build_loss
from matryoshka_train.losses.per_dim import SIMILARITY_KEY, similarity_term
from matryoshka_train.training.entry import run

DIMS = [32, 16, 8]


def test_term_is_zero_when_the_small_dim_keeps_every_cosine_and_ignores_their_scale():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 16, generator=gen)
    padded = torch.cat([x, torch.zeros(12, 16)], dim=1)  # nothing beyond dim 16: same cosines at 16 and 32
    assert similarity_term(padded, padded, 16).item() == pytest.approx(0.0, abs=1e-6)
    noisy = torch.cat([x, 3 * torch.randn(12, 16, generator=gen)], dim=1)
    assert similarity_term(noisy, noisy, 16).item() > 0.1
    # the view is scaled row by row (shrink normalizes), so row scales never matter
    assert similarity_term(noisy, noisy * 5, 16).item() == pytest.approx(similarity_term(noisy, noisy, 16).item())


def test_term_is_reported_apart_and_only_below_full_size(tiny_model_dir, data_dir):
    model = SentenceTransformer(str(tiny_model_dir))
    batch = triplet_batch(model, data_dir)
    loss = build_loss(model, LossConfig(name="mnrl"), MatryoshkaConfig(dims=DIMS, similarity_weight=2.0), DIMS)
    out = loss(batch, None)
    assert set(out) == {"dim32", "dim16", "dim8", SIMILARITY_KEY}
    assert out[SIMILARITY_KEY].item() > 0
    model.zero_grad()
    out[SIMILARITY_KEY].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    full_only = build_loss(model, LossConfig(name="mnrl"), MatryoshkaConfig(dims=[32], similarity_weight=2.0), [32])
    assert SIMILARITY_KEY not in full_only(batch, None)
    off = build_loss(model, LossConfig(name="mnrl"), MatryoshkaConfig(dims=DIMS), DIMS)
    assert SIMILARITY_KEY not in off(batch, None)


def test_descending_the_term_makes_the_small_dim_rank_pairs_as_full_size_does(tiny_model_dir, data_dir):
    model = SentenceTransformer(str(tiny_model_dir))
    model.eval()
    batch = triplet_batch(model, data_dir)
    loss = build_loss(model, LossConfig(name="mnrl"), MatryoshkaConfig(dims=[32, 8], similarity_weight=1.0), [32, 8])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(25):
        optimizer.zero_grad()
        term = loss(batch, None)[SIMILARITY_KEY]
        first = term.item() if first is None else first
        term.backward()
        optimizer.step()
    with torch.no_grad():
        last = loss(batch, None)[SIMILARITY_KEY].item()
    assert last < 0.5 * first


def test_cached_loss_gets_the_same_term_and_gradient_as_the_plain_loss(tiny_model_dir, data_dir):
    base = SentenceTransformer(str(tiny_model_dir))
    got = {}
    for name, kwargs, weight in (("mnrl", {}, 3.0), ("cached_mnrl", {"mini_batch_size": 3}, 3.0),
                                 ("without", {}, 0.0)):
        model = copy.deepcopy(base)
        model.eval()
        mcfg = MatryoshkaConfig(dims=DIMS, weights=[1.0, 2.0, 2.0], similarity_weight=weight)
        loss = build_loss(model, LossConfig(name=name.replace("without", "mnrl"), kwargs=kwargs), mcfg, DIMS)
        out = loss(triplet_batch(model, data_dir), None)
        sum(out.values()).backward()
        got[name] = ({k: v.item() for k, v in out.items()},
                     torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert got["mnrl"][0] == pytest.approx(got["cached_mnrl"][0], rel=1e-4)
    assert got["mnrl"][0][SIMILARITY_KEY] > 0
    torch.testing.assert_close(got["mnrl"][1], got["cached_mnrl"][1], rtol=1e-4, atol=2e-5)
    assert (got["mnrl"][1] - got["without"][1]).abs().max() > 100 * 2e-5  # the term's share is far above that


def test_a_run_logs_the_term(tiny_config, tmp_path):
    cfg = copy.deepcopy(tiny_config)
    cfg["training"].update(max_steps=4, logging_steps=1, output_dir=str(tmp_path / "run"))
    cfg.setdefault("matryoshka", {})["similarity_weight"] = 5.0
    cfg["evaluation"] = {"evaluators": []}
    run(validate(cfg), echo=lambda _: None)
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [e[SIMILARITY_KEY] for e in events if SIMILARITY_KEY in e]
    assert logged and all(v > 0 for v in logged)


def test_the_term_with_another_wrapper_is_refused_naming_the_key(tiny_config):
    from matryoshka_train.errors import UserError
    from matryoshka_train.training.prepare import config_problems

    cfg = copy.deepcopy(tiny_config)
    cfg["matryoshka"].update(similarity_weight=1.0, wrapper="matryoshka_2d", rotation={"enabled": False})
    problems = config_problems(validate(cfg))
    assert [p.where for p in problems] == ["matryoshka.similarity_weight"]
    assert "matryoshka_2d" in problems[0].message
    with pytest.raises(UserError, match="similarity_weight"):
        run(validate(cfg), echo=lambda _: None)
