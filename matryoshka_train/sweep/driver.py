"""``mtrain sweep``: hyperparameter search on Optuna, one ``mtrain run`` process per trial.

How a sweep runs (read :func:`run_sweep` top to bottom):

* **Storage.** The study lives in an Optuna RDB storage: ``sqlite:///<output_dir>/study.db`` by
  default, or any URL given with ``--storage`` (PostgreSQL for workers on several machines). All
  state is there, so any number of drivers — threads of one ``mtrain sweep --workers N``, or
  ``mtrain sweep`` on other machines — pull trials from the same study.
* **One process per trial.** A worker asks the study for a trial (``study.ask``), turns its
  values into ``--set`` overrides and starts ``python -m matryoshka_train run BASE --set ...``
  (prefixed by ``launcher``, e.g. ``accelerate launch``) with its own ``output_dir`` under
  ``<output_dir>/trials/``. Nothing is shared in memory, so no state leaks between trials; each has
  its own metrics.jsonl, results.json and carbon figures.
* **Pruning in the driver.** While the trial runs, the worker reads the trial's metrics.jsonl as
  it grows; each periodic evaluation gives the objective at that training step, which is reported
  to Optuna (``trial.report``). When the pruner says so, the worker ends the trial's process
  group and records the trial as PRUNED. The training code knows nothing about sweeps.
* **Resume.** Each RUNNING trial records the driver's host and pid and a heartbeat. At start, a
  RUNNING trial whose driver is gone (same host and the pid is dead, or no heartbeat for
  :data:`STALE_AFTER_S`) was interrupted: it is marked FAIL (``interrupted``) and its values are
  enqueued again, so the next trial asked re-runs it. Finished trials are kept.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UserError
from .config import (
    SweepConfig,
    check_against_base,
    decode_choice,
    encode_choice,
    load_sweep,
    overrides_for,
)
from .report import (
    objective_from_event,
    objective_from_results,
    progress_line,
    trial_summary,
    write_outputs,
)
from .storage import check_storage

HEARTBEAT_S = 30
STALE_AFTER_S = 300
POLL_S = 0.5
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _optuna() -> Any:
    try:
        import optuna  # optional extra (sweep): only `mtrain sweep` needs optuna
    except ImportError:
        raise UserError("mtrain sweep needs Optuna: pip install 'matryoshka-train[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class Sweep:
    """A loaded, checked sweep: the file, the base config's path and where things go."""

    config: SweepConfig
    base_path: Path
    base_raw: dict[str, Any]
    storage_url: str
    out: Path
    echo: Callable[[str], None] = print
    pruner_override: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def load(path: str | os.PathLike, storage: str | None = None, echo: Callable[[str], None] = print) -> Sweep:
    """Read the sweep file and check it against the base config (nothing is started)."""
    config, base_path = load_sweep(path)
    raw = check_against_base(config, base_path)
    out = Path(config.output_dir)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    return Sweep(config, base_path, raw, url, out, echo)


def run_sweep(sweep: Sweep, workers: int = 1) -> dict[str, Any]:
    """Run (or resume) the sweep with ``workers`` parallel trials; write the table, best.yaml and plots."""
    if workers < 1:
        raise UserError("--workers must be 1 or more", where="--workers")
    _optuna()
    check_storage(sweep.storage_url)  # a bad URL, a missing driver or an unreachable server: one line, nothing made
    sweep.out.mkdir(parents=True, exist_ok=True)
    _STOP.clear()
    study = open_study(sweep)
    requeued = requeue_interrupted(study)
    if requeued:
        sweep.echo(f"Resuming: trial(s) {', '.join(map(str, requeued))} were interrupted and will run again.")
    errors: list[BaseException] = []
    finished = [threading.Event() for _ in range(workers)]

    def work(index: int) -> None:
        try:
            _worker(sweep, open_study(sweep, worker=index))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            _STOP.set()  # e.g. the objective's metric does not exist: the other workers stop too
        finally:
            finished[index].set()

    for i in range(workers):
        threading.Thread(target=work, args=(i,), daemon=True, name=f"worker-{i}").start()
    # waiting with sleep, not Thread.join: a Ctrl-C inside join can leave a live thread marked as
    # finished, and the driver would exit before its workers ended and re-queued their trials
    try:
        while not all(e.is_set() for e in finished):
            time.sleep(0.2)
    except KeyboardInterrupt:
        _STOP.set()
        while not all(e.is_set() for e in finished):
            time.sleep(0.2)
        raise UserError("sweep interrupted; the running trial(s) will "
                        "run again: repeat the same command to resume") from None
    if errors:
        raise errors[0]

    return write_outputs(sweep, open_study(sweep))


_STOP = threading.Event()


# --------------------------------------------------------------------------------------------
# the study


def open_study(sweep: Sweep, worker: int = 0) -> Any:
    """Create or load the study; each worker gets its own Study object (and sampler seed)."""
    optuna = _optuna()
    c = sweep.config
    kwargs = {"connect_args": {"timeout": 60}} if sweep.storage_url.startswith("sqlite") else {}
    for attempt in range(6):  # drivers starting together race to create the tables; the losers retry
        try:
            storage = optuna.storages.RDBStorage(sweep.storage_url, engine_kwargs=kwargs)
            study = optuna.create_study(
                storage=storage, study_name=c.study_name, direction=c.objective.direction, load_if_exists=True,
                sampler=optuna.samplers.RandomSampler(), pruner=sweep.pruner_override or _pruner(optuna, c),
            )
            break
        except Exception as exc:  # noqa: BLE001 - a bad URL, a missing driver or an unreachable database
            racing = any(s in str(exc) for s in ("already exists", "UNIQUE constraint", "database is "
                                                                                        "locked", "duplicate key"))
            if attempt == 5 or not racing:
                raise UserError("cannot open the study storage: "
                                f"{str(exc).splitlines()[0]}", where="--storage") from None
            time.sleep(0.3 * (attempt + 1))
    # the seed moves on with the trials already in the study, so a resumed sweep does not draw its
    # first values again, and with the worker's index, so workers of one driver draw different ones
    seed = None if c.sampler.seed is None else c.sampler.seed + worker + len(study.get_trials(deepcopy=False))
    study.sampler = _sampler(optuna, c, seed)
    return study


def _sampler(optuna: Any, c: SweepConfig, seed: int | None) -> Any:
    if c.sampler.type == "grid":
        space = {k: [encode_choice(v) for v in (p.grid or p.choices)] for k, p in c.search_space.items()}
        return _grid_sampler(optuna)(space, seed=seed)
    if c.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=c.sampler.n_startup_trials)


def _grid_sampler(optuna: Any) -> type:
    """Optuna's GridSampler stops ``study.optimize`` when the grid is used up, which raises outside
    it; our workers stop themselves (see :func:`_grid_done`), so that hook is left out."""

    class GridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler


def _pruner(optuna: Any, c: SweepConfig) -> Any:
    p = c.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(p.min_resource, p.max_resource, p.reduction_factor)
    return optuna.pruners.NopPruner()


def suggest(trial: Any, c: SweepConfig) -> dict[str, Any]:
    """Ask the trial for a value of every searched key (enqueued values come back as given)."""
    for key, p in c.search_space.items():
        if p.kind == "range" and p.is_int:
            trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        elif p.kind == "range":
            trial.suggest_float(key, float(p.low), float(p.high), step=p.step, log=p.log)
        else:
            trial.suggest_categorical(key, [encode_choice(v) for v in (p.choices if p.choices is not None else p.grid)])
    return dict(trial.params)


def requeue_interrupted(study: Any) -> list[int]:
    """Mark RUNNING trials whose driver is gone as FAIL (``interrupted``) and enqueue their values."""
    from optuna.exceptions import UpdateFinishedTrialError  # optional extra (sweep)
    from optuna.trial import TrialState  # optional extra (sweep)

    storage, host, now = study._storage, socket.gethostname(), time.time()
    done = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.user_attrs
        beat = attrs.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else now)
        dead = attrs.get("host") == host and not _alive(attrs.get("pid"))
        if not (dead or now - beat > STALE_AFTER_S):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another driver got there first
        study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        done.append(t.number)
    return done


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counted(study: Any) -> int:
    """Trials that use up n_trials: all but the interrupted and surplus ones and those still waiting."""
    from optuna.trial import TrialState  # optional extra (sweep)

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.WAITING and not _not_counted(t))


def _not_counted(t: Any) -> bool:
    return bool(t.user_attrs.get("interrupted") or t.user_attrs.get("surplus"))


def _beyond_n_trials(study: Any, trial: Any, c: SweepConfig) -> bool:
    """Whether a just-asked trial would go past ``n_trials`` (it is then recorded as surplus, not run).

    A driver checks the count before it asks, but drivers on other machines may check at the same
    moment and all ask. The storage numbers trials in the order it made them (under a lock on the
    study), so the trials numbered before this one decide: when they already make ``n_trials``
    (queued retries included, since they will run), this one is one too many. A queued retry always
    runs: it takes the place of an interrupted trial.
    """
    if "retry_of" in trial.user_attrs:
        return False
    before = sum(1 for t in study.get_trials(deepcopy=False) if t.number < trial.number and not _not_counted(t))
    return before >= c.n_trials


# --------------------------------------------------------------------------------------------
# a worker: ask, run, tell, until the study has its trials


def _worker(sweep: Sweep, study: Any) -> None:
    from optuna.trial import TrialState  # optional extra (sweep)

    c = sweep.config
    while not _STOP.is_set():
        with sweep.lock:  # one ask at a time in this process, so its workers do not overshoot n_trials
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if (counted(study) >= c.n_trials or (c.sampler.type == "grid" and _grid_done(study, c))) and not waiting:
                return
            trial = study.ask()
            if _beyond_n_trials(study, trial, c):  # a driver elsewhere asked at the same moment
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=TrialState.FAIL)
                continue
            me = (("host", socket.gethostname()), ("pid", os.getpid()), ("heartbeat", time.time()),
                  ("worker", f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"))
            for key, value in me:
                trial.set_user_attr(key, value)
        params = suggest(trial, c)
        run_trial(sweep, study, trial, params)


def _grid_done(study: Any, c: SweepConfig) -> bool:
    from optuna.trial import TrialState  # optional extra (sweep)

    total = 1
    for p in c.search_space.values():
        total *= len(p.grid or p.choices)
    finished = {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
                or (t.state == TrialState.FAIL and not _not_counted(t))}
    return len(finished) >= total


def trial_command(sweep: Sweep, params: dict[str, Any], out: Path) -> list[str]:
    """The trial's command line: ``[launcher | python] -m matryoshka_train run BASE --set ...``."""
    c = sweep.config
    prefix = shlex.split(c.launcher) if c.launcher else [sys.executable]
    cmd = prefix + ["-m", "matryoshka_train", "run", str(sweep.base_path), "--overwrite"]
    # a trial never publishes: push the best trial's output with `mtrain push` once the sweep is done
    for item in overrides_for(params, c.fixed) + [f"training.output_dir={out}", "hub.push=false",
                                                  "hub.checkpoints=no"]:
        cmd += ["--set", item]
    return cmd


def run_trial(sweep: Sweep, study: Any, trial: Any, params: dict[str, Any]) -> None:
    """Run one trial's process, report its evaluations as they appear, prune or tell the result."""
    from optuna.trial import TrialState  # optional extra (sweep)


    c = sweep.config
    out = (sweep.out / "trials" / f"trial-{trial.number:04d}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    cmd = trial_command(sweep, params, out)
    trial.set_user_attr("output_dir", str(out))
    trial.set_user_attr("command", shlex.join(cmd))
    shown = ", ".join(f"{k}={decode_choice(v)}" for k, v in params.items())
    sweep.echo(f"trial {trial.number}: {shown}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])))
    log = open(out / "trial.log", "w", encoding="utf-8")  # noqa: SIM115 - open while the trial runs
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    reader = _LineReader(out / "metrics.jsonl")
    last_beat, pruned, reported = time.time(), False, None
    try:
        while proc.poll() is None and not pruned:
            time.sleep(POLL_S)
            if _STOP.is_set():
                raise KeyboardInterrupt  # the driver is stopping: end this trial, queue it again
            for event in reader.new_events():
                reported = _report(trial, c, event, objective_from_event) or reported
                if reported is not None and trial.should_prune():
                    pruned = True
                    _end(proc)
                    break
            if time.time() - last_beat > HEARTBEAT_S:
                trial.set_user_attr("heartbeat", time.time())
                last_beat = time.time()
    except BaseException:
        _end(proc)
        log.close()
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
        raise
    proc.wait()
    log.close()
    if not pruned:
        for event in reader.new_events():
            _report(trial, c, event, objective_from_event)
    results_path = out / "results.json"
    summary = trial_summary(results_path, c)
    for key, value in summary.items():
        trial.set_user_attr(key, value)
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        _ended(sweep, study, trial, f"pruned at step {reported[1]} ({c.objective.label()} = {reported[0]:.4f})")
        return
    if proc.returncode != 0 or not results_path.is_file():
        tail = _last_error(out / "trial.log")
        trial.set_user_attr("error", tail)
        study.tell(trial, state=TrialState.FAIL)
        _ended(sweep, study, trial, f"failed (exit {proc.returncode}): {tail} — see {out / 'trial.log'}")
        return
    value = objective_from_results(json.loads(results_path.read_text(encoding="utf-8")), c)
    if value is None:
        study.tell(trial, state=TrialState.FAIL)
        raise ConfigError(_missing_metric(results_path, c))
    study.tell(trial, value)
    _ended(sweep, study, trial, f"{c.objective.label()} = {value:.4f}")


def _ended(sweep: Sweep, study: Any, trial: Any, outcome: str) -> None:
    """The trial's line as it ends: done/total and the best so far (sweep/report.py:progress_line)."""
    sweep.echo(progress_line(study, sweep.config, trial.number, outcome))


def _report(trial: Any, c: SweepConfig, event: dict[str, Any], read: Callable) -> tuple[float, int] | None:
    if event.get("event") != "eval":
        return None
    value = read(event, c)
    if value is None:
        return None
    step = int(event.get("step", 0))
    trial.report(value, step)
    return value, step


def _missing_metric(results_path: Path, c: SweepConfig) -> str:
    after = json.loads(results_path.read_text(encoding="utf-8")).get("after") or {}
    metrics = sorted({m for dims in (after.get(c.objective.evaluator) or {}).values() for m in dims})
    return (f"objective.metric: evaluator '{c.objective.evaluator}' has no metric '{c.objective.metric}'"
            f"; it reports: {', '.join(metrics) or 'nothing'}")


def _end(proc: subprocess.Popen) -> None:
    """End the trial's whole process group (a launcher's children too): TERM, then KILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:300]


class _LineReader:
    """Reads the complete JSON lines appended to a file since the last call."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new_events(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        events = []
        for line in data[:end].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events
