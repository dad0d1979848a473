"""Assemble the realistic ablation set (data/realistic) from the files it was written in.

data/realistic/written/ holds the text as written for this project, in batches:
triplets-*.jsonl (anchor, entailed positive, contradicting negative, topic, register) and
sts-*.jsonl (sentence1, sentence2, score 0-5, style). This script checks them (every field
present, no text repeated, scores in range) and writes, deterministically:

    data/realistic/train.jsonl     every triplet but the held-out ones, shuffled (seed 17)
    data/realistic/heldout.jsonl   HELDOUT triplets for the triplet evaluator, never trained on
    data/realistic/sts.jsonl       every scored pair
    data/realistic/hard.jsonl      written/hard/triplets-*.jsonl (5,004 more triplets, files 38-63 each
                                   drilling one hard case), shuffled (seed 17): with train.jsonl, the
                                   harder set (scripts/quality/realistic-hard.yaml)
    data/sts-details/pairs.jsonl   data/sts-details/written/part-*.jsonl: 1,000 scored pairs in the public STS
                                   benchmark's genres (captions, news, forum lines), most differing in one
                                   detail (data/sts-details/README.md)
    data/sts-headlines/pairs.jsonl data/sts-headlines/written/part-*.jsonl: 1,000 scored pairs of news
                                   headlines and forum lines in which word overlap rises with the score,
                                   as in the public benchmark (data/sts-headlines/README.md)
    data/news-forum-texts/texts.jsonl  data/news-forum-texts/written/part-*.jsonl: 1,300 unlabelled news
                                   headlines, wire sentences and forum lines (text only), none of them a
                                   sentence of sts-headlines: the domain text for the rotation's PCA start
                                   (matryoshka.rotation.pca_source; data/news-forum-texts/README.md)

    python scripts/quality/make_realistic_data.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "realistic"
HELDOUT = 500
TRIPLET_KEYS = ("anchor", "positive", "negative", "topic", "register")
STS_KEYS = ("sentence1", "sentence2", "score", "style")
DETAILS = ROOT / "data" / "sts-details"
DETAILS_KEYS = ("sentence1", "sentence2", "score", "genre", "case")
HEADLINES = ROOT / "data" / "sts-headlines"
DOMAIN = ROOT / "data" / "news-forum-texts"


def read(pattern: str, keys: tuple[str, ...], folder: Path = DATA / "written") -> list[dict]:
    rows = []
    for path in sorted(folder.glob(pattern)):  # written/ only: written/hard/ is read apart
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in keys if row.get(k) in (None, "")]
            if missing:
                sys.exit(f"{path.name}:{n}: missing {missing}")
            rows.append({k: row[k] for k in keys})
    return rows


def main() -> None:
    triplets = read("triplets-*.jsonl", TRIPLET_KEYS)
    pairs = read("sts-*.jsonl", STS_KEYS)
    anchors = [t["anchor"] for t in triplets]
    if len(set(anchors)) != len(anchors):
        sys.exit("a triplet anchor is repeated; make every anchor distinct")
    if any(not 0 <= float(p["score"]) <= 5 for p in pairs):
        sys.exit("an STS score is outside 0-5")
    hard = read("hard/triplets-*.jsonl", TRIPLET_KEYS)
    if {t["anchor"] for t in hard} & set(anchors) or len({t["anchor"] for t in hard}) != len(hard):
        sys.exit("a triplet anchor of written/hard/ is repeated; make every anchor distinct")
    details = read("part-*.jsonl", DETAILS_KEYS, DETAILS / "written")
    headlines = read("part-*.jsonl", DETAILS_KEYS, HEADLINES / "written")
    for name, rows in (("sts-details", details), ("sts-headlines", headlines)):
        if any(not 0 <= float(p["score"]) <= 5 for p in rows):
            sys.exit(f"an {name} score is outside 0-5")
        if len({(p["sentence1"], p["sentence2"]) for p in rows}) != len(rows):
            sys.exit(f"an {name} pair is repeated; make every pair distinct")
    domain = read("part-*.jsonl", ("text", "genre"), DOMAIN / "written")
    norm = {" ".join(t.lower().split()) for p in headlines for t in (p["sentence1"], p["sentence2"])}
    if len({" ".join(r["text"].lower().split()) for r in domain}) != len(domain):
        sys.exit("a news-forum-texts text is repeated; make every text distinct")
    if any(" ".join(r["text"].lower().split()) in norm for r in domain):
        sys.exit("a news-forum-texts text is a sentence of sts-headlines; rewrite it (it must stay unseen)")
    rng = random.Random(17)
    rng.shuffle(triplets)
    heldout, train = triplets[:HELDOUT], triplets[HELDOUT:]
    random.Random(17).shuffle(hard)
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", heldout), ("sts.jsonl", pairs),
                       ("hard.jsonl", hard)):
        (DATA / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (DOMAIN / "texts.jsonl").write_text("".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n"
                                                for r in domain), encoding="utf-8")  # texts only: a pca_source
    for folder, rows in ((DETAILS, details), (HEADLINES, headlines)):
        (folder / "pairs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                            encoding="utf-8")
    print(f"{len(train)} training triplets, {len(heldout)} held out, {len(pairs)} scored pairs, "
          f"{len(hard)} more hard triplets -> {DATA}; {len(details)} detail pairs -> {DETAILS}; "
          f"{len(headlines)} headline and forum pairs -> {HEADLINES}; {len(domain)} unlabelled texts -> {DOMAIN}")


if __name__ == "__main__":
    main()
