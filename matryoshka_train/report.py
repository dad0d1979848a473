"""Turning results.json into what people read: the terminal table and the model card section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import RunConfig

CARD_MARKER = "<!-- matryoshka-train results -->"


def results_table(results: dict[str, Any]) -> str:
    """Per-dim before/after table of each evaluator's primary metric, plus carbon and speed."""
    lines = []
    dims = results["dims"]
    eval_dims = _dims_in(results) or dims
    for name, metric in results["primary_metric"].items():
        lines.append(f"\n{name} · {metric}")
        lines.append(f"  {'dim':>6}  {'before':>8}  {'after':>8}  {'change':>8}")
        for dim in eval_dims:
            b = _cell(results["before"], name, dim, metric)
            a = _cell(results["after"], name, dim, metric)
            change = f"{a - b:+8.4f}" if a is not None and b is not None else f"{'':>8}"
            lines.append(f"  {dim:>6}  {_fmt(b)}  {_fmt(a)}  {change}")
    train = results.get("train", {})
    lines.append(
        f"\nTrained {train.get('steps', 0)} steps, {train.get('samples', 0)} samples in "
        f"{train.get('runtime_s', 0):.1f}s ({train.get('samples_per_second', 0):.1f} samples/s)"
    )
    lines.append(carbon_line(results.get("carbon", {})))
    return "\n".join(lines)


def carbon_line(carbon: dict[str, Any]) -> str:
    if not carbon.get("tracked"):
        return f"Carbon: not measured ({carbon.get('note', 'tracking off')})"
    return (
        f"Carbon: {carbon['energy_kwh'] * 1000:.3f} Wh, {carbon['emissions_kg'] * 1000:.3f} g CO2eq "
        f"over {carbon['duration_s']:.0f}s (codecarbon, {carbon.get('country_iso_code') or 'online'})"
    )


def markdown_table(results: dict[str, Any]) -> str:
    out = []
    eval_dims = _dims_in(results) or results["dims"]
    for name, metric in results["primary_metric"].items():
        out.append(f"**{name}** — `{metric}`\n")
        out.append("| dim | before | after | change |")
        out.append("|---:|---:|---:|---:|")
        for dim in eval_dims:
            b = _cell(results["before"], name, dim, metric)
            a = _cell(results["after"], name, dim, metric)
            change = f"{a - b:+.4f}" if a is not None and b is not None else ""
            out.append(f"| {dim} | {_plain(b)} | {_plain(a)} | {change} |")
        out.append("")
    return "\n".join(out)


def add_model_card_section(readme: Path, config: RunConfig, results: dict[str, Any]) -> None:
    """Put our per-dim table and carbon figures at the top of the card sentence-transformers wrote."""
    readme = Path(readme)
    card = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    front, body = "", card
    if card.startswith("---"):
        end = card.find("\n---", 3)
        if end != -1:
            front, body = card[: end + 4] + "\n", card[end + 4 :]
    dims = ", ".join(str(d) for d in results["dims"])
    section = "\n".join(
        [
            CARD_MARKER,
            "## Matryoshka evaluation (matryoshka-train)",
            "",
            f"Trained from `{config.model.name_or_path}` with Matryoshka dims {dims}. "
            "Load at a smaller size with `SentenceTransformer(path, truncate_dim=DIM)`.",
            "",
            markdown_table(results),
            f"{carbon_line(results.get('carbon', {}))}",
            "",
            CARD_MARKER,
            "",
        ]
    )
    if CARD_MARKER in body:  # replace a previous section
        start = body.index(CARD_MARKER)
        stop = body.index(CARD_MARKER, start + 1) + len(CARD_MARKER)
        body = body[:start] + body[stop:].lstrip("\n")
    readme.write_text(front + "\n" + section + "\n" + body.lstrip("\n"), encoding="utf-8")


def _dims_in(results: dict[str, Any]) -> list[int]:
    for phase in ("after", "before"):
        for per_dim in results.get(phase, {}).values():
            return [int(d) for d in per_dim]
    return []


def _cell(block: dict, name: str, dim: int, metric: str) -> float | None:
    return (block or {}).get(name, {}).get(str(dim), {}).get(metric)


def _fmt(value: float | None) -> str:
    return f"{value:8.4f}" if value is not None else f"{'—':>8}"


def _plain(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "—"
