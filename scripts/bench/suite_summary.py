"""One screen of the figures gpu_suite.sh wrote (the raw JSON stays the record).

python scripts/bench/suite_summary.py OUTDIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(value, spec: str = ".2f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def category_line(p: dict) -> str | None:
    """Where a profiled step's GPU time went, by kernel category (benchlib.kernel_breakdown), or None."""
    by = p.get("kernel_time_by_category_s_per_step")
    if not by:
        return None
    total = sum(by.values()) or 1.0
    busy = p.get("gpu_busy_s_per_step")
    parts = " · ".join(f"{k} {v / total:.0%}" for k, v in by.items() if v / total >= 0.01)
    return f"      GPU busy {_f(busy, '.3f')}s/step; kernel time: {parts}"


def train_lines(record: dict) -> list[str]:
    s = record["settings"]
    title = (
        f"train.py {record['model']} {record['device']} words {s['words'][0]}-{s['words'][1]} batch {s['batch']}"
        f" ({record.get('label') or 'default'}; {'complete' if record.get('complete') else 'INCOMPLETE'})"
    )
    lines = [title]
    for side, summary in record["summary"].items():
        for which in ("first", "warm"):
            f = (summary or {}).get(which)
            if not f:
                continue
            lines.append(
                f"  {side:<18} {which:<5} {_f(f['samples_per_s'], '.1f'):>8} "
                f"samples/s  step {_f(f['median_step_s'], '.3f')}s"
                f"  pad {_f(f['pad_share'], '.0%')}  MFU {_f(f.get('mfu'), '.1%')} "
                f" peak {_f(f.get('peak_memory_gib'), '.1f')} GiB"
            )
    for which, r in (record.get("ratios") or {}).items():
        lines.append(f"  ours/theirs {which}: {_f(r.get('samples_per_s'))}x samples/s")
    for side, rs in (record.get("variant_ratios") or {}).items():
        for which, r in rs.items():
            lines.append(f"  {side}/theirs {which}: {_f(r.get('samples_per_s'))}x samples/s")
    for side, runs in record["runs"].items():
        for r in runs:
            for probed in r.get("memory_probe") or []:  # training.memory_probe: the largest batch before step 1
                lines.append(f"  {side:<18} run {r['repeat']}: memory probe {probed['rows']} rows, "
                             f"{_f(probed.get('tokens'), ',.0f')} tokens in {_f(probed['seconds'], '.2f')}s, "
                             f"peak {_f(probed.get('peak_gib'), '.1f')} GiB")
            if (r.get("padding") or {}).get("attention"):  # the packed forward: which attention ran
                lines.append(f"  {side:<18} run {r['repeat']}: packed, attention {r['padding']['attention']}")
            delta = r.get("allocator_delta_timed_window") or {}
            if delta:
                lines.append(
                    f"  {side:<18} run {r['repeat']}: cudaMalloc {delta.get('num_device_alloc')} / alloc retries "
                    f"{delta.get('num_alloc_retries')} in the timed "
                    f"window, {r['encoder_shapes_new_to_process']} encoder "
                    f"shapes new to the process, host step {_f(min(r['host_step_s'] or [0]), '.3f')}-"
                    f"{_f(max(r['host_step_s'] or [0]), '.3f')}s"
                )
    for side, p in (record.get("profile") or {}).items():
        if "profile_error" in p:
            lines.append(f"  profile {side}: ERROR {p['profile_error']}")
            continue
        lines.append(
            f"  profile {side:<10} syncs/step {_f(p.get('host_device_syncs_per_step'), '.1f')}"
            f"  kernels/step {_f(p.get('kernels_per_step'), '.0f')}  kernel "
            f"time/step {_f(p.get('kernel_time_s_per_step'), '.3f')}s"
            f"  host wall/step {_f(sum(p['host_step_s']) / max(len(p['host_step_s']), 1), '.3f')}s"
            f"  aten ops/step {_f(p.get('aten_ops_per_step'), '.0f')} "
            f" distinct GEMM shapes {p.get('distinct_gemm_shapes')}"
            f"  collate {_f(p.get('collate_s_per_step'), '.1f', 1000)} ms/step"
        )
        categories = category_line(p)
        if categories:
            lines.append(categories)
        top = (p.get("readbacks") or {}).get("top_callers") or []
        for caller in top[:4]:
            lines.append(f"      read-back {caller['per_step']:.1f}/step at {caller['where']}")
    if record.get("loss_equality"):
        lines.append(f"  loss equality: {'PASS' if record['loss_equality'].get('passed') else 'FAIL'}")
    for side, why in {**(record.get("failed") or {}), **(record.get("variants_invalid") or {})}.items():
        lines.append(f"  {side}: {why.splitlines()[0][:160]}")
    return lines


def profile_lines(record: dict) -> list[str]:
    lines = [f"gpu_profile.py {record['profile']} batch {record['settings']['batch']}"]
    for r in record["runs"]:
        p = r.get("profile") or {}
        lines.append(
            f"  {r['variant']:<11} {r['real_tokens_per_s']:>12,.0f} real tokens/s  MFU {_f(r['mfu'], '.1%')}"
            f"  peak {_f(r['peak_memory_gib'], '.1f')} GiB  step "
            f"{_f(r['median_step_s'], '.3f')}s  warm-up {_f(r['warmup_s'], '.1f')}s"
            f"  vs plain {_f(r.get('vs_plain_real_tokens_per_s'))}x"
            + (
                f"  syncs/step {_f(p.get('host_device_syncs_per_step'), '.1f')} "
                f"kernels/step {_f(p.get('kernels_per_step'), '.0f')}"
                f" GEMM shapes {p.get('distinct_gemm_shapes')}"
                if p
                else ""
            )
            + (f"  attention {r['packed']['attention']}" if r.get("packed") else "")
        )
        categories = category_line(p)
        if categories:
            lines.append(categories)
    for variant, why in (record.get("failed_variants") or {}).items():
        lines.append(f"  {variant}: FAILED {why.splitlines()[0][:160]}")
    probe = record.get("shape_probe")
    if probe:
        lines.append(
            f"  shape probe: {len(probe['widths'])} widths x {probe['rows']} "
            f"rows: first pass {probe['first_pass_total_s']:.2f}s,"
            f" second {probe['second_pass_total_s']:.2f}s ({probe['first_over_second']:.2f}x); "
            f"allocator {probe.get('allocator_per_pass')}"
        )
    return lines


def batches_lines(record: dict) -> list[str]:
    s = record["settings"]
    lines = [f"batches.py {s['device']} words {s['words'][0]}-{s['words'][1]} batch {s['batch']}"]
    for k, r in record["results"].items():
        ms = r["ms_per_batch"]
        lines.append(
            f"  {k} dataset(s): ms/batch theirs {_f(ms.get('theirs'))} · ours:rows {_f(ms.get('ours:rows'))}"
            f" · ours {_f(ms.get('ours'))} · ours:texts {_f(ms.get('ours:texts'))}"
            f"  ours vs ours:rows {_f(r.get('ratio_ours_vs_ours_rows'))}x"
            f"  same batches {'PASS' if r['checks'].get('ours_equals_ours_rows') else 'FAIL'}"
        )
    return lines


def main() -> None:
    out = Path(sys.argv[1])
    lines = []
    for path in sorted(out.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            lines.append(f"{path.name}: not readable JSON")
            continue
        try:
            if record.get("benchmark") == "train":
                lines += train_lines(record)
            elif record.get("benchmark") == "gpu_profile":
                lines += profile_lines(record)
            elif record.get("benchmark") == "batches":
                lines += batches_lines(record)
        except Exception as exc:  # noqa: BLE001 - a summary must not hide the other files
            lines.append(f"{path.name}: cannot summarise ({type(exc).__name__}: {exc})")
    text = "\n".join(lines)
    (out / "summary.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
