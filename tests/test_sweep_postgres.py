"""Sweeps on many machines: `mtrain sweep` processes sharing one study on a real PostgreSQL server.

The server: the URL in MTRAIN_TEST_POSTGRES_URL when it is set (a database this test may create
studies in); otherwise a throwaway cluster started here from the PostgreSQL server binaries
(Debian's `postgresql` package: /usr/lib/postgresql/VERSION/bin), listening only on a unix socket in
a temporary folder, stopped when the session ends. As root, the cluster runs as the `postgres`
system user (initdb refuses root). Without either the tests skip, except in CI (CI=true), where they
fail: .ci/run installs the server, so a skip there would hide a broken install.

Each test uses its own study name, so they can share one database. Trials are the same tiny
`mtrain run` processes as in tests/test_sweep.py (2 steps, no baseline evaluation); the drivers are
real `python -m matryoshka_train sweep ... --storage URL` processes, as on separate machines (each
with its own output_dir)."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import REPO

optuna = pytest.importorskip("optuna")

from matryoshka_train.cli import main  # noqa: E402 - after importorskip

URL_ENV = "MTRAIN_TEST_POSTGRES_URL"
DATABASE = "mtrain_test"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run here; .ci/run installs the server)",
                    pytrace=False)
    pytest.skip(reason)


def _server_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


class _Cluster:
    """A throwaway PostgreSQL cluster: trust login for user ``postgres``, unix socket only, no fsync."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.as_user: list[str] = []
        # in /tmp rather than $TMPDIR: the postgres user must reach it, and a socket path is short
        self.dir = Path(tempfile.mkdtemp(prefix="mtrain-postgres-", dir="/tmp" if os.path.isdir("/tmp") else None))
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("running as root and there is no 'postgres' system user to run the server as")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"

    def _run(self, *args: str) -> None:
        done = subprocess.run(self.as_user + list(args), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def start(self) -> str:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
                  "-w", "-t", "60", "-o", f"-k {self.dir} -c listen_addresses= -F", "start")
        import psycopg  # optional extra (postgres): checked by the fixture before the server starts

        with psycopg.connect(host=str(self.dir), user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        return f"postgresql+psycopg://postgres@/{DATABASE}?host={self.dir}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url():
    """A SQLAlchemy URL of a PostgreSQL database for sweep studies (see the module docstring)."""
    try:
        import psycopg  # noqa: F401 - optional extra (postgres): the driver the URL names
    except ImportError:
        _unavailable("psycopg is not installed: pip install 'matryoshka-train[postgres]'")
    if os.environ.get(URL_ENV):
        yield os.environ[URL_ENV]
        return
    bindir = _server_bin()
    if bindir is None:
        _unavailable(f"no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): apt-get install "
                     f"postgresql, or set {URL_ENV}")
    cluster = _Cluster(bindir)
    try:
        url = cluster.start()
    except Exception as exc:  # noqa: BLE001 - any failure to start is reported as the reason
        cluster.stop()
        _unavailable(f"cannot start a throwaway PostgreSQL server from {bindir}: {exc}")
    try:
        yield url
    finally:
        cluster.stop()


@pytest.fixture()
def machine_sweep(tiny_config, write_config, tmp_path):
    """machine_sweep(name, **changes) -> a sweep file whose output_dir is this 'machine's' own; every
    file made by one test names the same study (unique to the test), as the same sweep file copied to
    several machines would."""
    base = write_config(tiny_config, name="base.yaml")
    study = f"pg-{uuid.uuid4().hex[:10]}"

    def make(name: str, **changes) -> Path:
        data = {
            "base": base.name,
            "output_dir": str(tmp_path / name),
            "study_name": study,
            "n_trials": 2,
            "sampler": {"type": "random", "seed": None},  # as documented for many machines
            "objective": {"evaluator": "tiny", "metric": "cosine_accuracy", "aggregate": "mean"},
            "search_space": {
                "training.learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
                "matryoshka.reduction": {"choices": ["sum", "mean"]},
            },
            "fixed": {"training.max_steps": 2, "evaluation.before": False},
        }
        data.update(changes)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    make.study = study
    return make


def _driver(path: Path, url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "matryoshka_train", "sweep", str(path), "--storage", url],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"driver exited {proc.returncode}:\n{out}\n{err}"
    return out


def _trials(url: str, study: str) -> list:
    return optuna.load_study(study_name=study, storage=url).get_trials()


def test_two_sweep_processes_on_one_postgres_study_share_its_trials(machine_sweep, postgres_url, tmp_path):
    """Two drivers, as on two machines: every trial runs once, on one of them, and there are n_trials."""
    paths = {name: machine_sweep(name, n_trials=3) for name in ("machine-a", "machine-b")}
    drivers = {name: _driver(path, postgres_url) for name, path in paths.items()}
    printed = {name: _finish(proc) for name, proc in drivers.items()}

    every = _trials(postgres_url, machine_sweep.study)
    # two drivers asking at the same moment may make one trial too many: it is recorded as surplus
    # (numbered after the three that count), failed at once and never started (see the test below)
    surplus = [t for t in every if t.user_attrs.get("surplus")]
    assert all(t.state.name == "FAIL" and t.params == {} and t.number > 2 for t in surplus), surplus
    trials = [t for t in every if not t.user_attrs.get("surplus")]
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" and t.value is not None for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 3  # no values ran twice
    by_pid = {proc.pid: name for name, proc in drivers.items()}
    ran = {name: [t.number for t in trials if by_pid[t.user_attrs["pid"]] == name] for name in paths}
    assert ran["machine-a"] and ran["machine-b"], ran  # both drivers took trials from the study
    for name, numbers in ran.items():
        for n in numbers:  # each trial ran in the output_dir of the machine that took it, and only there
            assert (tmp_path / name / "trials" / f"trial-{n:04d}" / "results.json").is_file()
            other = "machine-b" if name == "machine-a" else "machine-a"
            assert not (tmp_path / other / "trials" / f"trial-{n:04d}").exists()
            assert f"trial {n}: training.learning_rate=" in printed[name]
    # each driver's table lists the whole study, wherever its trials ran (the other's may still run)
    for name in paths:
        for t in surplus:  # a surplus trial ran nowhere
            assert not (tmp_path / name / "trials" / f"trial-{t.number:04d}").exists()
        rows = json.loads((tmp_path / name / "trials.json").read_text())["trials"]
        assert [r["trial"] for r in rows] == [0, 1, 2]
        assert {r["state"] for r in rows if r["trial"] in ran[name]} == {"complete"}


def _kill_trial_processes(out_dir: Path) -> None:
    """End the trial processes a SIGKILLed driver left running (they name their output_dir)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"training.output_dir={out_dir}".encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def test_a_killed_drivers_trial_is_queued_again_and_the_study_resumes(machine_sweep, postgres_url, tmp_path):
    path = machine_sweep("machine-a", n_trials=2)
    first = _driver(path, postgres_url)
    log = tmp_path / "machine-a" / "trials" / "trial-0000" / "trial.log"
    deadline = time.time() + 120
    while not log.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert log.is_file(), first.communicate()
    first.kill()  # SIGKILL: no chance to mark its trial; it stays RUNNING in the database
    first.communicate()
    _kill_trial_processes(log.parent)
    (left,) = _trials(postgres_url, machine_sweep.study)
    assert left.state.name == "RUNNING" and left.user_attrs["pid"] == first.pid

    printed = _finish(_driver(path, postgres_url))  # the same command again, later
    assert "Resuming: trial(s) 0 were interrupted and will run again." in printed
    trials = _trials(postgres_url, machine_sweep.study)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["interrupted"] is True
    assert trials[1].params == left.params and trials[1].user_attrs["retry_of"] == 0
    assert trials[2].params != left.params  # a new trial completes the study: n_trials finished
    for n in (1, 2):
        assert (tmp_path / "machine-a" / "trials" / f"trial-{n:04d}" / "results.json").is_file()
    rows = json.loads((tmp_path / "machine-a" / "trials.json").read_text())["trials"]
    assert [r["state"] for r in rows] == ["interrupted", "complete", "complete"]


def test_drivers_asking_at_the_same_moment_do_not_run_past_n_trials(machine_sweep, postgres_url, monkeypatch):
    """No trial processes: driver B counted the study just before driver A asked for the last trial,
    so both see room for one more; B's trial comes out numbered past n_trials and is not run."""
    from matryoshka_train.sweep import driver
    from matryoshka_train.sweep.report import trial_rows

    sweep = driver.load(machine_sweep("machine-b", n_trials=2), storage=postgres_url)
    sweep.out.mkdir(parents=True)
    a, b = driver.open_study(sweep), driver.open_study(sweep, worker=1)
    done = a.ask()
    driver.suggest(done, sweep.config)
    a.tell(done, 0.5)
    stale = iter([driver.counted(b)])  # 1: what B saw before A's ask below
    real_count = driver.counted
    monkeypatch.setattr(driver, "counted", lambda study: next(stale, None) or real_count(study))
    last = a.ask()  # A's trial: the study's second, running
    assert not driver._beyond_n_trials(a, last, sweep.config)
    driver._STOP.clear()
    driver._worker(sweep, b)  # B asks (its count was stale), sees trial 2 is one too many, and stops

    trials = driver.open_study(sweep).get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "RUNNING"), (2, "FAIL")]
    assert trials[2].user_attrs == {"surplus": True} and trials[2].params == {}  # never started
    assert not (sweep.out / "trials").exists()
    assert real_count(b) == 2 and [r["trial"] for r in trial_rows(b)] == [0, 1]


def test_storage_url_problems_are_one_line_before_anything_starts(machine_sweep, tmp_path, capsys, monkeypatch):
    """No server needed: a URL SQLAlchemy cannot read, an unknown database, nothing listening, no driver."""
    pytest.importorskip("psycopg")  # the driver (postgres extra), for the 'nothing listening' case
    path = machine_sweep("machine-a")
    cases = [
        ("not a url", "error: --storage: 'not a url' is not a database URL; use postgresql+psycopg://"),
        ("postgres://u@db-host/sweeps", "error: --storage: unknown database 'postgres' in postgres://u@db-host/sweeps"),
        ("postgresql+psycopg://u:secret@127.0.0.1:1/sweeps",
         "error: --storage: cannot reach the database postgresql+psycopg://u:***@127.0.0.1:1/sweeps: "),
    ]
    for url, expected in cases:
        assert main(["sweep", str(path), "--storage", url]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expected), err
        assert "secret" not in err[0]
    monkeypatch.setitem(sys.modules, "psycopg", None)  # the driver is not installed
    assert main(["sweep", str(path), "--storage", "postgresql+psycopg://u@db-host/sweeps"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --storage: the postgresql driver 'psycopg' is not installed (needed by "
        "postgresql+psycopg://u@db-host/sweeps): pip install 'matryoshka-train[postgres]'"
    ]
    assert not (tmp_path / "machine-a").exists()


def test_a_database_that_does_not_exist_is_one_line(machine_sweep, postgres_url, tmp_path, capsys):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(database="no_such_database")
    assert main(["sweep", str(machine_sweep("machine-a")), "--storage", url.render_as_string(hide_password=False)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --storage: cannot reach the database {url.render_as_string(hide_password=True)}: ")
    assert 'database "no_such_database" does not exist' in line and "createdb NAME" in line
    assert not (tmp_path / "machine-a").exists()
