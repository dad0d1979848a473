"""Turning results.json into what people read: the terminal table, the model card section, and
`mtrain report`'s Markdown report with PNG plots (the plots themselves are in :mod:`plots`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..config.schema import RunConfig
from ..errors import UserError
from . import plots
from .plots import RunData, pareto_front, primary_evaluators

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
    lines += reference_lines(results)
    train = results.get("train", {})
    lines.append(
        f"\nTrained {train.get('steps', 0)} steps, {train.get('samples', 0)} samples in "
        f"{train.get('runtime_s', 0):.1f}s ({train.get('samples_per_second', 0):.1f} samples/s)"
    )
    lines.append(carbon_line(results.get("carbon", {})))
    lines += [f"Quality per energy: {line}" for line in energy_lines(results)]
    return "\n".join(lines)


def reference_groups(results: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """results.json's ``reference`` rows grouped by (evaluator, metric), largest dim first; rows
    whose key names no per-dim figure of the run are grouped under ("", key)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for key, row in ((results.get("reference") or {}).get("metrics") or {}).items():
        group = (row["evaluator"], row["metric"]) if row.get("evaluator") else ("", key)
        groups.setdefault(group, []).append(row)
    for rows in groups.values():
        rows.sort(key=lambda r: -(r.get("dim") or 0))
    return groups


def reference_lines(results: dict[str, Any]) -> list[str]:
    """The trained model against published figures (``evaluation.reference``): per evaluator and
    metric, each dim's published value, this run's, and the delta (this run − published)."""
    groups = reference_groups(results)
    if not groups:
        return []
    lines = [f"\nAgainst published figures ({results['reference']['source']}); delta = this run − published"]
    for (name, metric), rows in groups.items():
        if not name:
            lines.append(f"{metric}: published {rows[0]['published']:.4f}; not a per-dim figure of this run")
            continue
        lines.append(f"{name} · {metric}")
        lines.append(f"  {'dim':>6}  {'published':>9}  {'this run':>8}  {'delta':>8}")
        for row in rows:
            delta = f"{row['delta']:+8.4f}" if row.get("delta") is not None else f"{'—':>8}"
            lines.append(f"  {row['dim']:>6}  {row['published']:9.4f}  {_fmt(row.get('run'))}  {delta}")
    return lines


def reference_markdown(results: dict[str, Any]) -> list[str]:
    """:func:`reference_lines` as Markdown tables, for `mtrain report`."""
    groups = reference_groups(results)
    if not groups:
        return []
    out = [f"Published figures: {results['reference']['source']}. Delta = this run − published.", ""]
    for (name, metric), rows in groups.items():
        if not name:
            out += [f"- `{metric}`: published {rows[0]['published']:.4f}; not a per-dim figure of this run", ""]
            continue
        out += [f"**{name}** — `{metric}`", "", "| dim | published | this run | delta |", "|---:|---:|---:|---:|"]
        for row in rows:
            delta = f"{row['delta']:+.4f}" if row.get("delta") is not None else "—"
            out.append(f"| {row['dim']} | {row['published']:.4f} | {_plain(row.get('run'))} | {delta} |")
        out.append("")
    return out


def energy_lines(results: dict[str, Any]) -> list[str]:
    """One line per evaluator: the full-dim primary metric (and its gain) per kWh, when measured."""
    per = results.get("quality_per_kwh") or {}
    out = []
    for name, row in per.items():
        if not isinstance(row, dict) or row.get("per_kwh") is None:
            continue
        gain = f", gain {row['gain_per_kwh']:+.3g} per kWh" if row.get("gain_per_kwh") is not None else ""
        out.append(f"{name} {row['metric']}@{row['dim']} = {row['value']:.4f} over {per['energy_kwh'] * 1000:.3f} Wh "
                   f"→ {row['per_kwh']:.3g} per kWh{gain}")
    return out


def eval_table(results: dict[str, Any]) -> str:
    """`mtrain eval`'s table: each evaluator's primary metric per dim and precision, with the
    share of the full-dim float32 value kept and the bytes per vector."""
    lines = []
    for name, metric in results["primary_metric"].items():
        grid = results.get("grid", {}).get(name) or {"float32": results["after"].get(name, {})}
        full = _cell(results["after"], name, max(_dims_in(results)), metric)
        lines.append(f"\n{name} · {metric}")
        lines.append(f"  {'precision':>9}  {'dim':>6}  {'bytes':>6}  {'value':>8}  {'kept':>7}")
        for precision, cells in grid.items():
            for dim, cell in sorted(cells.items(), key=lambda kv: -int(kv[0])):
                value = cell.get(metric)
                kept = f"{100 * value / full:6.1f}%" if value is not None and full else f"{'':>7}"
                nbytes = cell.get("bytes", "")
                lines.append(f"  {precision:>9}  {dim:>6}  {nbytes:>6}  {_fmt(value)}  {kept}")
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
            (f"Trained from `{config.model.name_or_path}` with Matryoshka dims {dims}. "
             "Load at a smaller size with `SentenceTransformer(path, truncate_dim=DIM)`."),
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


# --------------------------------------------------------------------------------------------
# mtrain report: Markdown + PNG plots for one or several run (or eval) directories


def load_run(directory: str | Path) -> Any:
    """results.json (required) and metrics.jsonl (optional) of a run or `mtrain eval` directory."""

    root = Path(directory)
    path = root / "results.json"
    if not path.is_file():
        raise UserError(f"no results.json in {root}: give a directory written by `mtrain run` or `mtrain eval`",
                        where=str(directory))
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"results.json is not valid JSON ({exc.msg}, line {exc.lineno})", where=str(path)) from None
    if "after" not in results and "results" in results:
        results["after"] = results["results"]
    for key in ("dims", "after", "primary_metric"):
        if key not in results:
            raise UserError(f"results.json lacks '{key}': not written by matryoshka-train", where=str(path))
    results.setdefault("before", {})
    events = []
    log = root / "metrics.jsonl"
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run: skip it, keep the rest
    label = root.resolve().name or str(root)
    return RunData(label, root, results, events)


def write_report(directories: list[str | Path], output: str | Path | None = None) -> Path:
    """Write report.md and its PNG plots for the given directories; returns the Markdown path.
    Default output: <first directory>/report."""

    runs = [load_run(d) for d in directories]
    labels = [r.label for r in runs]
    for i, run in enumerate(runs):  # two directories with one name: tell them apart
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({i + 1})"
    out = Path(output) if output else Path(directories[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "metric_vs_dim.png": plots.metric_vs_dim(runs, out / "metric_vs_dim.png"),
        "metric_vs_bytes.png": plots.metric_vs_bytes(runs, out / "metric_vs_bytes.png"),
        "training_curves.png": plots.training_curves(runs, out / "training_curves.png"),
    }
    md = out / "report.md"
    md.write_text(report_markdown(runs, {k for k, v in figures.items() if v}), encoding="utf-8")
    return md


def report_markdown(runs: list[Any], figures: set[str]) -> str:
    names = ", ".join(f"`{r.label}`" for r in runs)
    out = [f"# Matryoshka report: {names}", "", "Written by `mtrain report` from each "
                                                "directory's results.json and metrics.jsonl.", ""]
    out += ["## Runs", "", "| run | model | dims | steps | train time | energy | CO2eq |",
            "|---|---|---|---:|---:|---:|---:|"]
    for r in runs:
        res, train, carbon = r.results, r.results.get("train", {}), r.results.get("carbon", {})
        energy = f"{carbon['energy_kwh'] * 1000:.2f} Wh" if carbon.get("tracked") else "not measured"
        co2 = f"{carbon['emissions_kg'] * 1000:.2f} g" if carbon.get("tracked") else "—"
        steps = train.get("steps", "— (eval only)" if not train else 0)
        runtime = f"{train['runtime_s']:.0f} s" if train.get("runtime_s") else "—"
        model = res.get("model") or _model_of(r)
        out.append(
            f"| {r.label} | {model} | {', '.join(map(str, res['dims']))} | {steps} | {runtime} | {energy} | {co2} |"
        )
    out.append("")

    out += ["## Quality at each dimension", ""]
    if "metric_vs_dim.png" in figures:
        out += ["![Primary metric against embedding size](metric_vs_dim.png)", ""]
    for r in runs:
        if len(runs) > 1:
            out += [f"### {r.label}", ""]
        out.append(markdown_table(r.results))

    compared = [r for r in runs if reference_groups(r.results)]
    if compared:
        out += ["## Against the published model", ""]
        if "metric_vs_dim.png" in figures:
            out += ["The published figures are the black stars in the plot above.", ""]
        for r in compared:
            if len(runs) > 1:
                out += [f"### {r.label}", ""]
            out += reference_markdown(r.results)

    out += [
        "## Share of full-dimension quality kept",
        "",
        "Each dim's primary metric as a percentage of the same model's value at its largest dim.",
        "",
    ]
    for name, metric in primary_evaluators(runs):
        out += [f"**{name}** — `{metric}`", ""]
        columns = [(r, phase) for r in runs for phase in ("before", "after") if r.per_dim(phase, name, metric)]
        header = [f"{r.label} {phase}" if len(runs) > 1 else phase for r, phase in columns]
        out += ["| dim | " + " | ".join(header) + " |", "|---:|" + "---:|" * len(columns)]
        dims = sorted({d for r, phase in columns for d in r.per_dim(phase, name, metric)}, reverse=True)
        for dim in dims:
            cells = []
            for r, phase in columns:
                values = r.per_dim(phase, name, metric)
                full = values[max(values)]
                cells.append(f"{100 * values[dim] / full:.1f}%" if dim in values and full else "—")
            out.append(f"| {dim} | " + " | ".join(cells) + " |")
        out.append("")

    grid_runs = [r for r in runs if r.results.get("grid")]
    if grid_runs:
        out += [
            "## Quality against memory per vector",
            "",
            (
                "Every dim × precision cell: float32 costs 4 bytes per dimension, int8 1, binary 1/8. "
                "Cells marked ★ are on the Pareto front: no other cell is as small and at least as good."
            ),
            "",
        ]
        if "metric_vs_bytes.png" in figures:
            out += ["![Primary metric against bytes per vector](metric_vs_bytes.png)", ""]
        for r in grid_runs:
            out += _grid_tables(r, len(runs) > 1)

    if "training_curves.png" in figures:
        out += [
            "## Training curves",
            "",
            (
                "Left: the logged training loss and each Matryoshka dim's share of it (the shares add up "
                "to the total). Right: the first evaluator at each dim over steps (step 0 is the base model)."
            ),
            "",
            "![Training loss and evaluation over steps](training_curves.png)",
            "",
        ]
        best = [
            (r.label, r.results.get("train", {})) for r in runs if r.results.get("train", {}).get("best_checkpoint")
        ]
        for label, train in best:
            out.append(
                f"- {label}: best checkpoint `{Path(train['best_checkpoint']).name}` (metric "
                f"{train['best_metric']:.4f})"
            )
        out.append("")

    out += ["## Quality per energy", ""]
    lines = [f"- {r.label}: {line}" for r in runs for line in energy_lines(r.results)]
    out += lines or ["Energy was not measured (carbon tracking off or failed), so there is no quality per kWh."]
    return "\n".join(out) + "\n"


def _grid_tables(run: Any, titled: bool) -> list[str]:
    out = []
    for name, metric in run.primary.items():
        grid = run.results["grid"].get(name)
        if not grid:
            continue
        cells = [(p, int(d), c["bytes"], c[metric]) for p, per in grid.items() for d, c in per.items() if metric in c]
        front = set(pareto_front([(b, v) for _, _, b, v in cells]))
        out += [
            f"**{run.label + ' · ' if titled else ''}{name}** — `{metric}`",
            "",
            "| precision | dim | bytes/vector | value | |",
            "|---|---:|---:|---:|---|",
        ]
        for p, d, b, v in sorted(cells, key=lambda c: (-c[2], c[0])):
            out.append(f"| {p} | {d} | {b} | {v:.4f} | {'★' if (b, v) in front else ''} |")
        out.append("")
    return out


def _model_of(run: Any) -> str:
    resolved = run.path / "config.resolved.yaml"
    if resolved.is_file():
        return str(
            (yaml.safe_load(resolved.read_text(encoding="utf-8")) or {}).get("model", {}).get("name_or_path", "?")
        )
    return "?"
