"""Write data/distill/sentences.jsonl: the distinct sentences of the quickstart training triplets,
one per row ({"sentence": ...}), for the offline distillation recipe (configs/distill-offline.yaml).

    python scripts/make_distill_data.py

The quickstart triplets (data/quickstart/train.jsonl) were written for this project; every anchor,
positive and negative is used once, in file order, so the output is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "quickstart" / "train.jsonl"
TARGET = ROOT / "data" / "distill" / "sentences.jsonl"


def main() -> None:
    seen: set[str] = set()
    rows = []
    for line in SOURCE.read_text(encoding="utf-8").splitlines():
        triplet = json.loads(line)
        for key in ("anchor", "positive", "negative"):
            text = triplet[key].strip()
            if text and text not in seen:
                seen.add(text)
                rows.append({"sentence": text})
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} sentences to {TARGET.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
