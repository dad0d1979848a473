"""Assemble the quickstart dataset from the hand-written parts in data/quickstart/raw/.

The raw parts (anchor, positive, hard negative, topic) were written for this project, one topic
area per file. This script drops any triplet that repeats a text seen earlier (case-insensitive),
shuffles with a fixed seed, and writes a held-out evaluation split stratified across the parts:

    python scripts/make_quickstart_data.py        # writes data/quickstart/{train,eval}.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "data" / "quickstart" / "raw"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-per-part", type=int, default=50, help="held-out triplets taken from each part")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    seen: set[str] = set()
    train, evaluation = [], []
    for part in sorted(RAW.glob("part*.jsonl")):
        rows = []
        for line in part.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts = [row[k].strip() for k in ("anchor", "positive", "negative")]
            keys = [t.lower() for t in texts]
            if any(k in seen for k in keys) or len(set(keys)) < 3:
                continue
            seen.update(keys)
            rows.append({"anchor": texts[0], "positive": texts[1], "negative": texts[2], "topic": row["topic"]})
        rng.shuffle(rows)
        evaluation += rows[: args.eval_per_part]
        train += rows[args.eval_per_part :]
    rng.shuffle(train)
    rng.shuffle(evaluation)
    out = ROOT / "data" / "quickstart"
    for name, rows in (("train", train), ("eval", evaluation)):
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"train: {len(train)} triplets, eval: {len(evaluation)} triplets -> {out}")


if __name__ == "__main__":
    main()
