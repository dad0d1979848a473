"""Energy and CO2 figures through codecarbon, in a wrapper that can never fail a run.

We do not use transformers' ``CodeCarbonCallback``: it starts codecarbon's online tracker, which
looks the machine's location up over the network (unreachable on many clusters) and raises if
codecarbon is missing. Offline mode takes the country from the config instead.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..config.schema import CarbonConfig

log = logging.getLogger("matryoshka_train")

EMPTY = {"energy_kwh": None, "emissions_kg": None, "duration_s": None, "country_iso_code": None, "tracked": False}


class CarbonMeter:
    """Start/stop around the work to measure; :meth:`stop` returns the figures (or nulls with a reason).

    Uses codecarbon's offline tracker with the configured country by default (no network), and
    never fails the run: a missing or failing codecarbon becomes a note in the figures.

    Args:
        cfg: The ``carbon`` config section (enabled, offline, country_iso_code).
        output_dir: Where codecarbon writes emissions.csv.
        enabled_here: False on the processes other than the main one (they measure nothing).

    Example:
        ::

            from matryoshka_train.config import CarbonConfig
            from matryoshka_train.reporting.carbon import CarbonMeter

            meter = CarbonMeter(CarbonConfig(country_iso_code="FRA"), "outputs/run")
            meter.start()
            ...  # train or evaluate
            figures = meter.stop()  # {"energy_kwh": ..., "emissions_kg": ..., "tracked": True, ...}
    """

    def __init__(self, cfg: CarbonConfig, output_dir: str | Path, enabled_here: bool = True):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.tracker: Any = None
        self.reason = "" if cfg.enabled else "disabled in config (carbon.enabled: false)"
        self._start = 0.0
        if cfg.enabled and not enabled_here:
            self.reason = "measured on the main process only"

    def start(self) -> None:
        self._start = time.time()
        if self.reason:
            return
        try:
            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            import codecarbon  # optional at run time: a missing or broken codecarbon is a note, not a failure

            self.output_dir.mkdir(parents=True, exist_ok=True)
            common = {"output_dir": str(self.output_dir), "log_level": "error", "save_to_file": True,
                      "project_name": "matryoshka-train", "allow_multiple_runs": True}
            if self.cfg.offline:
                self.tracker = codecarbon.OfflineEmissionsTracker(country_iso_code=self.cfg.country_iso_code, **common)
            else:
                self.tracker = codecarbon.EmissionsTracker(**common)
            self.tracker.start()
        except Exception as exc:  # noqa: BLE001 - codecarbon must never stop training
            self.tracker = None
            self.reason = f"codecarbon unavailable: {type(exc).__name__}: {exc}"
            log.warning("Carbon tracking is off for this run (%s).", self.reason)

    def stop(self) -> dict[str, Any]:
        figures = dict(EMPTY, duration_s=round(time.time() - self._start, 3))
        if self.tracker is None:
            return dict(figures, note=self.reason or "not started")
        try:
            emissions = self.tracker.stop()
            data = self.tracker.final_emissions_data
            return {
                "energy_kwh": float(data.energy_consumed),
                "emissions_kg": float(emissions if emissions is not None else data.emissions),
                "duration_s": float(data.duration),
                "country_iso_code": getattr(data, "country_iso_code", self.cfg.country_iso_code),
                "tracked": True,
                "emissions_file": str(self.output_dir / "emissions.csv"),
                "hardware": _hardware(data),
            }
        except Exception as exc:  # noqa: BLE001 - nor stop the run from finishing
            log.warning("Carbon figures could not be read (%s: %s).", type(exc).__name__, exc)
            return dict(figures, note=f"codecarbon failed at stop: {exc}")


def _hardware(data: Any) -> dict[str, Any]:
    """What codecarbon saw of the machine (the model card's co2_eq_emissions names it)."""
    ram = getattr(data, "ram_total_size", None)
    return {
        "cpu_model": getattr(data, "cpu_model", None) or None,
        "gpu_model": getattr(data, "gpu_model", None) or None,
        "ram_total_size": round(float(ram), 3) if isinstance(ram, (int, float)) else None,
        "on_cloud": getattr(data, "on_cloud", "N") == "Y",
    }
