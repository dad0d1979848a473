"""The realistic ablation set (issue 17): big enough, assembled as the script says, and the
ablation's config passes `mtrain check`."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_DIM

DATA = REPO / "data" / "realistic"
DETAILS = REPO / "data" / "sts-details"
HEADLINES = REPO / "data" / "sts-headlines"
DOMAIN = REPO / "data" / "news-forum-texts"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_set_is_as_large_as_the_issue_asks_and_held_out_rows_are_not_trained_on():
    train, heldout, pairs = _rows("train.jsonl"), _rows("heldout.jsonl"), _rows("sts.jsonl")
    assert len(train) + len(heldout) >= 5000 and len(heldout) == 500
    assert len(pairs) >= 1000
    anchors = [t["anchor"] for t in train + heldout]
    assert len(set(anchors)) == len(anchors)
    assert not {t["anchor"] for t in heldout} & {t["anchor"] for t in train}
    assert all(t["anchor"] and t["positive"] and t["negative"] for t in train + heldout)
    scores = [float(p["score"]) for p in pairs]
    assert min(scores) >= 0 and max(scores) <= 5
    assert sum(s < 2.5 for s in scores) > 300 and sum(s >= 2.5 for s in scores) > 300  # both halves of the scale


def test_assembled_files_match_the_written_batches(tmp_path):
    """make_realistic_data.py is deterministic: rerunning it reproduces the committed files."""
    files = [DATA / n for n in ("train.jsonl", "heldout.jsonl", "sts.jsonl")] + [
        DETAILS / "pairs.jsonl", HEADLINES / "pairs.jsonl", DOMAIN / "texts.jsonl"]
    before = {f: f.read_bytes() for f in files}
    subprocess.run([sys.executable, "scripts/quality/make_realistic_data.py"], cwd=REPO, check=True,
                   capture_output=True)
    assert {f: f.read_bytes() for f in files} == before


def test_the_details_set_spreads_over_the_scale_in_the_public_benchmarks_genres():
    """data/sts-details: 1,000 distinct scored pairs of captions, news and forum lines, every fifth of the
    scale represented, and most of the middle of the scale made of pairs that differ in one detail."""
    rows = [json.loads(line) for line in (DETAILS / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 1000
    assert len({(r["sentence1"], r["sentence2"]) for r in rows}) == len(rows)
    assert {r["genre"] for r in rows} == {"caption", "news", "forum"}
    scores = [float(r["score"]) for r in rows]
    assert all(0 <= s <= 5 for s in scores)
    assert all(sum(lo <= s < lo + 1 for s in scores) >= 100 for lo in range(4))
    middle = [r for r in rows if 1.5 <= float(r["score"]) <= 3.2]
    one_detail = {"subject", "count", "object", "action", "place", "time", "number", "attribute"}
    assert sum(r["case"] in one_detail for r in middle) > len(middle) / 2
    trained = {t[k] for n in ("train.jsonl", "heldout.jsonl", "hard.jsonl") for t in _rows(n)
               for k in ("anchor", "positive", "negative")}
    assert not {r[k] for r in rows for k in ("sentence1", "sentence2")} & trained  # an evaluation, not a recall


def test_the_headlines_set_has_word_overlap_rising_with_the_score_in_each_genre():
    """data/sts-headlines: 1,000 distinct pairs of news and forum lines whose word overlap rises with the
    score band in each genre (the public benchmark's structure, which the other written sets lack), every
    band represented, and no sentence shared with the training text or the public STS-B test."""
    profile = _quality_script("sts_profile")
    rows = [json.loads(line) for line in (HEADLINES / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 1000
    assert len({(r["sentence1"], r["sentence2"]) for r in rows}) == len(rows)
    assert {r["genre"] for r in rows} == {"news", "forum"}
    for genre in ("news", "forum"):
        picked = [r for r in rows if r["genre"] == genre]
        means = profile.band_means([float(r["score"]) for r in picked],
                                   [profile.overlap(r["sentence1"], r["sentence2"]) for r in picked])
        assert None not in means and all(a < b for a, b in zip(means, means[1:])), (genre, means)
    trained = {t[k] for n in ("train.jsonl", "heldout.jsonl", "hard.jsonl") for t in _rows(n)
               for k in ("anchor", "positive", "negative")}
    sentences = {r[k] for r in rows for k in ("sentence1", "sentence2")}
    assert not sentences & trained
    public = REPO / "data" / "public" / "stsb-test.jsonl"  # fetched by public_sts.py; absent on a fresh clone
    if public.is_file():
        stsb = {json.loads(line)[k] for line in public.read_text(encoding="utf-8").splitlines()
                for k in ("sentence1", "sentence2")}
        assert not sentences & stsb


def test_the_domain_texts_are_unlabelled_news_and_forum_lines_none_of_them_an_evaluated_sentence():
    """data/news-forum-texts: the unlabelled domain text the domain-PCA variant fits its start on. It
    must not hold a sentence of sts-headlines (the set it is judged on), or the start would have seen
    the test; and it must pass `mtrain check` as a matryoshka.rotation.pca_source."""
    rows = [json.loads(line) for line in (DOMAIN / "texts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 1000 and all(set(r) == {"text"} for r in rows)  # every column is read: text only
    written = [json.loads(line) for f in sorted((DOMAIN / "written").glob("part-*.jsonl"))
               for line in f.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in written] == [r["text"] for r in rows]
    assert {r["genre"] for r in written} == {"news", "forum"}
    norm = [" ".join(r["text"].lower().split()) for r in rows]
    assert len(set(norm)) == len(norm)
    pairs = [json.loads(line) for line in (HEADLINES / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    evaluated = {" ".join(p[k].lower().split()) for p in pairs for k in ("sentence1", "sentence2")}
    assert not set(norm) & evaluated
    ablation = _quality_script("ablation")
    proc = subprocess.run([sys.executable, "-m", "matryoshka_train", "check", "scripts/quality/realistic.yaml",
                           "--set", ablation.DOMAIN_PCA_OVERRIDE], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and f"{len(rows)} distinct from data/news-forum-texts/texts.jsonl" in proc.stdout, (
        proc.stdout + proc.stderr)


def test_sts_profile_overlap_and_bands():
    """The overlap the headlines set is built on: Jaccard of lowercased word sets, averaged per score band."""
    profile = _quality_script("sts_profile")
    assert profile.overlap("A cat sat.", "a cat ran") == 0.5  # {a, cat} of {a, cat, sat, ran}
    assert profile.overlap("", "") == 0.0
    means = profile.band_means([0.5, 0.7, 4.2, 5.0], [0.1, 0.3, 0.6, 0.8])
    assert means[1:4] == [None, None, None] and means[0] == pytest.approx(0.2) and means[4] == pytest.approx(0.7)


def test_sts_profile_cli_prints_the_overlap_profile_and_rejects_a_bad_file(tmp_path):
    good = tmp_path / "pairs.jsonl"
    good.write_text("".join(json.dumps({"sentence1": f"x {i} y", "sentence2": f"x {i} z", "score": i % 6,
                                        "genre": "g"}) + "\n" for i in range(12)))
    run = [sys.executable, "scripts/quality/sts_profile.py"]
    proc = subprocess.run([*run, str(good)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "12 pairs" in proc.stdout and "0.500" in proc.stdout  # {x, i} of {x, i, y, z}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no pair here"}) + "\n")
    proc = subprocess.run([*run, str(bad)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "needs JSON lines with sentence1, sentence2 and score" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([*run, str(good), "--model", "no-equals-sign"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "write it as NAME=PATH" in proc.stderr


def test_sts_profile_start_scores_the_rotation_start_from_the_training_texts(tmp_path, tiny_model_dir, capsys):
    """--start: the first model scored under the PCA start at each fraction; fraction 0 is no rotation,
    so it matches the model's own truncated score; a file without the text columns is a one-line error."""
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    profile = _quality_script("sts_profile")
    words = ["a cat sits on a mat", "a dog runs in a park", "the market fell today", "rain is expected",
             "a man plays a guitar", "a woman plays a piano", "shares rose in early trade", "snow fell overnight"]
    rows = [{"sentence1": a, "sentence2": b, "score": float(i % 6)} for i, (a, b) in enumerate(zip(words, words[1:]))]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"anchor": w, "positive": w[::-1], "negative": w.upper(), "topic": "t"})
                             + "\n" for w in words))
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    profile.start_costs(("tiny", model), rows, train, ["anchor", "positive", "negative"], dims=(16, 8))
    lines = [line for line in capsys.readouterr().out.splitlines() if "rotation's start" in line]
    assert [line.split("start, ")[1].split(" of the way")[0] for line in lines] == ["0", "0.25", "0.5", "1"]
    a = model.encode([r["sentence1"] for r in rows], convert_to_tensor=True)[:, :8]
    b = model.encode([r["sentence2"] for r in rows], convert_to_tensor=True)[:, :8]
    own = 100 * spearmanr(torch.nn.functional.cosine_similarity(a, b), [r["score"] for r in rows])[0]
    assert lines[0].endswith(f"8 {own:.2f}")  # no rotation: the model's own first 8 coordinates
    with pytest.raises(SystemExit, match="no anchorx texts found"):
        profile.start_costs(("tiny", model), rows, train, ["anchorx"], dims=(8,))
    # --domain: two more starts, fit on the domain texts alone and with as many training texts; the first
    # one is the PCA rotation of the domain texts' embeddings, half-way (checked against the framework's own)
    from matryoshka_train.models.rotation import part_way, pca_rotation

    domain = tmp_path / "domain.jsonl"
    news = ["floods close the coast road", "the council votes on rents", "a port strike enters day three",
            "storm cuts power to the north", "the court delays the verdict", "bank raises rates again"]
    domain.write_text("".join(json.dumps({"text": t}) + "\n" for t in news))
    profile.start_costs(("tiny", model), rows, train, ["anchor", "positive", "negative"], (domain, ["text"]), dims=(8,))
    lines = [line for line in capsys.readouterr().out.splitlines() if "rotation's start" in line]
    assert len(lines) == 6 and "PCA of domain.jsonl alone" in lines[4] and "+ as many training texts" in lines[5]
    turn = part_way(pca_rotation(model.encode(news, convert_to_tensor=True, normalize_embeddings=True).float()), 0.5)
    a8, b8 = ((model.encode([r[k] for r in rows], convert_to_tensor=True, normalize_embeddings=True) @ turn.T)[:, :8]
              for k in ("sentence1", "sentence2"))
    alone = 100 * spearmanr(torch.nn.functional.cosine_similarity(a8, b8), [r["score"] for r in rows])[0]
    assert lines[4].endswith(f"8 {alone:.2f}")


def test_the_ablation_config_passes_check():
    proc = subprocess.run([sys.executable, "-m", "matryoshka_train", "check", "scripts/quality/realistic.yaml"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: a run would start" in proc.stdout


def test_the_seen_suite_base_and_its_variants_pass_check(tmp_path):
    """realistic-seen trains its own base first, then starts each variant from it: both configs,
    with the overrides the script passes, validate (the base is any model dir: the tiny test one)."""
    ablation = _quality_script("ablation")
    suite = ablation.SUITES["realistic-seen"]
    config, overrides = suite.base
    sets = [x for o in overrides for x in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "matryoshka_train", "check", config, *sets],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "OK: a run would start" in proc.stdout, proc.stdout + proc.stderr
    assert "loss.matryoshka=false" in overrides  # the base sees the data at full size only, as MiniLM saw NLI
    assert ablation.train_base(ablation.SUITES["realistic"], tmp_path, reuse=True) == []  # no base: nothing to set


def test_the_verdict_reports_how_far_a_second_seed_moved_the_scores(tmp_path, monkeypatch):
    ablation = _quality_script("ablation")
    monkeypatch.setattr(ablation, "DOCS", tmp_path)
    (tmp_path / "quality").mkdir()
    assert "not measured" in ablation.seed_line()  # no second seed yet: says so, claims nothing

    def stored(shift: float) -> str:
        result = {"primary_metric": {"realistic-sts": "s", "sts-independent": "s"},
                  "after": {ev: {"384": {"s": 0.70 + shift}, "8": {"s": 0.50}}
                            for ev in ("realistic-sts", "sts-independent")}}
        return json.dumps({"results": {"summed": result}})

    (tmp_path / "quality" / "realistic-seen.json").write_text(stored(0.0))
    (tmp_path / "quality" / "realistic-seen-seed43.json").write_text(stored(0.004))
    line = ablation.seed_line()
    assert "realistic-seen `summed`" in line and "at most 0.40" in line and "0.20 points on average" in line


def _quality_script(name: str):
    sys.path.insert(0, str(REPO / "scripts" / "quality"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_public_sts_lines_are_read_as_the_benchmark_lays_them_out():
    """STS-B's CSV: genre, file, year, id, score, sentence1, sentence2, then (on some lines) licence
    columns; a line cut short is refused rather than read into the wrong columns."""
    public_sts = _quality_script("public_sts")
    text = ("main-captions\tMSRvid\t2012test\t0024\t2.500\tA girl is styling her hair.\tA girl is brushing her hair.\n"
            "main-forum\tdeft-forum\t2014\t0001\t0.800\tIt rains.\tThe sun shines.\tsrc\tlicence\n")
    rows = public_sts.rows_from_csv(text)
    assert rows == [
        {"sentence1": "A girl is styling her hair.", "sentence2": "A girl is brushing her hair.", "score": 2.5,
         "genre": "main-captions"},
        {"sentence1": "It rains.", "sentence2": "The sun shines.", "score": 0.8, "genre": "main-forum"},
    ]
    import pytest

    with pytest.raises(ValueError, match="5 columns"):
        public_sts.rows_from_csv("main\tx\t2012\t1\t2.0\n")


def test_every_ablation_run_is_also_scored_on_the_public_sts_test(monkeypatch, tmp_path):
    """public_evaluation adds STS-B test after the config's own evaluators, and the config still
    validates with it (the file itself is fetched from PyPI, so here a stand-in is written)."""
    ablation = _quality_script("ablation")
    public_sts = _quality_script("public_sts")
    stand_in = tmp_path / "stsb-test.jsonl"
    stand_in.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "score": 1.0}) + "\n")
    fetched = []
    monkeypatch.setattr(public_sts, "fetch", lambda: fetched.append(True))
    monkeypatch.setitem(ablation.PUBLIC_STS, "source", {"path": str(stand_in)})
    overrides = ablation.public_evaluation("scripts/quality/realistic.yaml")
    assert fetched == [True]
    from matryoshka_train.config import load_config

    config = load_config(REPO / "scripts/quality/realistic.yaml", overrides)
    names = [ev.name for ev in config.evaluation.evaluators]
    assert names == ["realistic-sts", "sts-independent", "realistic-heldout", "stsb-test", "sts-details",
                     "sts-headlines"]


def test_rerunning_some_variants_keeps_the_others_stored(tmp_path):
    ablation = _quality_script("ablation")
    suite = ablation.SUITES["realistic"]
    stored = tmp_path / "realistic.json"
    first = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    ablation.store(stored, suite, {"defaults": {"x": 1}, "pca": {"x": 2}}, first, "", keep_others=False)
    later = dt.datetime(2026, 11, 27, tzinfo=dt.timezone.utc)
    ablation.store(stored, suite, {"pca": {"x": 3}}, later, "", keep_others=True)
    data = json.loads(stored.read_text())
    assert data["results"] == {"defaults": {"x": 1}, "pca": {"x": 3}}
    assert data["dates"] == {"defaults": first.isoformat(), "pca": later.isoformat()}
    ablation.store(stored, suite, {"pca": {"x": 4}}, later, "", keep_others=False)  # a whole-suite run replaces
    assert json.loads(stored.read_text())["results"] == {"pca": {"x": 4}}


def test_the_best_variant_is_judged_on_the_public_sts_test_where_the_old_defaults_were_scored_on_it():
    """A variant that meets the target on the written sets but loses STS-B at full size ranks below one
    that misses a single small dim there; without STS-B scores for the old defaults, only the written
    sets count."""
    ablation = _quality_script("ablation")
    suite = ablation.SUITES["realistic"]

    def result(full: float, small: float, public: tuple[float, float] | None) -> dict:
        scores = {ev: {"384": full, "64": small, "32": small, "16": small, "8": small}
                  for ev in suite.evaluators}
        before = {ev: {d: 0.5 for d in ("384", "64", "32", "16", "8")} for ev in suite.evaluators}
        if public is not None:
            scores["stsb-test"] = {"384": public[0], "64": 0.6, "32": public[1], "16": 0.6, "8": 0.6}
            before["stsb-test"] = {d: 0.5 for d in ("384", "64", "32", "16", "8")}
        metrics = {ev: "s" for ev in scores}
        wrap = {phase: {ev: {d: {"s": v} for d, v in dims.items()} for ev, dims in values.items()}
                for phase, values in (("after", scores), ("before", before))}
        return {"primary_metric": metrics, **wrap}

    raw = {"defaults": result(0.51, 0.49, (0.4, 0.4)),
           "loses-full-size": result(0.51, 0.70, (0.4, 0.6)),  # best on the written sets
           "misses-one-dim": result(0.51, 0.60, (0.5, 0.45))}
    meets, best, tied, text = ablation.choose(suite, raw)
    assert (meets, best, tied) == (False, "misses-one-dim", ["misses-one-dim"]) and text == "misses: stsb-test@32"
    for r in raw.values():  # the old defaults unscored on STS-B: the written sets decide
        del r["after"]["stsb-test"], r["before"]["stsb-test"]
    assert ablation.choose(suite, raw)[:2] == (True, "loses-full-size")
    # a variant whose start reads domain text is a user's choice, never ranked as the default, however good
    raw["rotation-coupled-llrd0.5-small2-half-domainmix"] = result(0.60, 0.90, None)
    assert ablation.choose(suite, raw)[:2] == (True, "loses-full-size")
    del raw["rotation-coupled-llrd0.5-small2-half-domainmix"]
    raw["rotation-coupled-llrd0.5-small2-half-domainmixer"] = result(0.60, 0.90, None)  # only the suffixes count
    assert ablation.choose(suite, raw)[1] == "rotation-coupled-llrd0.5-small2-half-domainmixer"


def test_rescore_scores_saved_variants_on_the_later_sets_and_records_it(tmp_path, tiny_model_dir, monkeypatch):
    """--rescore: a stored variant not scored on the later written sets (sts-details, sts-headlines) is
    scored on each it lacks from its saved model (after) and the model it started from (before), by
    `mtrain eval`; a variant whose model is gone stays unscored."""
    import shutil

    ablation = _quality_script("ablation")
    pairs = tmp_path / "pairs.jsonl"
    words = ["a cat sits on a mat", "a dog runs in a park", "the market fell today", "rain is expected",
             "a man plays a guitar", "a woman plays a piano"]
    pairs.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": float(i % 6)}) + "\n"
                             for i, (a, b) in enumerate(zip(words, words[1:] + words[:1]))))
    monkeypatch.setitem(ablation.DETAILS_STS, "source", {"path": str(pairs)})
    monkeypatch.setitem(ablation.HEADLINES_STS, "source", {"path": str(pairs)})
    out_root = tmp_path / "runs"
    shutil.copytree(tiny_model_dir, out_root / "trained")
    dims = [TINY_DIM, 8]
    stored = tmp_path / "suite.json"
    unscored = {"dims": dims, "before": {}, "after": {}, "primary_metric": {}}
    (out_root / "trained" / "results.json").write_text(json.dumps(unscored))  # the run that saved it
    shutil.copytree(tiny_model_dir, out_root / "overwritten")  # a later run's model: not the stored one's
    (out_root / "overwritten" / "results.json").write_text(json.dumps({"after": {"realistic-sts": {"384": 1}}}))
    half = json.loads(json.dumps(unscored))  # scored on sts-details in its run: only sts-headlines is missing
    for phase in ("before", "after"):
        half[phase]["sts-details"] = {str(d): {"spearman_cosine": 0.123} for d in dims}
    half["primary_metric"]["sts-details"] = "spearman_cosine"
    shutil.copytree(tiny_model_dir, out_root / "half")
    (out_root / "half" / "results.json").write_text(json.dumps(half))
    stored.write_text(json.dumps({"results": {"trained": json.loads(json.dumps(unscored)), "gone": unscored,
                                              "overwritten": json.loads(json.dumps(unscored)), "half": half}}))
    suite = ablation.SUITES["realistic-seen"]  # a suite with its own base model: before is scored on that
    ablation.rescore(suite, stored, out_root, tiny_model_dir)
    results = json.loads(stored.read_text())["results"]
    trained = results["trained"]
    assert trained["rescored"] == ["sts-details", "sts-headlines"]
    for name in ("sts-details", "sts-headlines"):
        assert trained["primary_metric"][name] == "spearman_cosine"
        assert set(trained["after"][name]) == {str(d) for d in dims}
        assert trained["before"][name] == trained["after"][name]  # the same weights both sides
    assert results["half"]["rescored"] == ["sts-headlines"]  # its own run's sts-details score is kept
    assert results["half"]["after"]["sts-details"]["8"] == {"spearman_cosine": 0.123}
    assert results["half"]["after"]["sts-headlines"] == trained["after"]["sts-headlines"]
    for n in ("gone", "overwritten"):
        assert "sts-details" not in results[n]["after"] and "rescored" not in results[n]


def test_variants_not_scored_on_a_set_the_old_defaults_were_scored_on_are_not_ranked():
    """A variant judged on fewer sets than the old defaults would win by missing the set it was not scored
    on: choose() leaves it out."""
    ablation = _quality_script("ablation")
    suite = ablation.SUITES["realistic"]
    evs = (*suite.evaluators, "stsb-test", "sts-details")

    def result(small: float, sets=evs) -> dict:
        dims = ("384", "64", "32", "16", "8")
        after = {ev: {d: {"s": 0.5 if d == "384" else small} for d in dims} for ev in sets}
        before = {ev: {d: {"s": 0.5} for d in dims} for ev in sets}
        return {"primary_metric": {ev: "s" for ev in sets}, "after": after, "before": before}

    raw = {"defaults": result(0.49), "scored-everywhere": result(0.55),
           "never-on-details": result(0.70, evs[:-1])}
    assert ablation.choose(suite, raw)[:3] == (True, "scored-everywhere", ["scored-everywhere"])
