"""Scale-out on real servers: 3 tuning workers share a PostgreSQL study and log to a real MLflow server.

The test starts its OWN throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl`` from Debian's
``postgresql`` package, installed by ``.ci/install_postgres.sh``) on 127.0.0.1 and a free port, and
its own ``mlflow server`` (SQLite backend, proxied artifact store), then runs ``galaxy10 tune
--workers 3`` against both, exactly as workers on several machines would (one storage URL, one
tracking URI). Every trial must be in both places with its metrics and artifacts. Both servers are
stopped by their process ids in the fixtures' teardown.

PostgreSQL refuses to run as root: as root the cluster is made by the ``postgres`` user in a
temporary folder it owns (pytest's ``tmp_path`` lies under a root-only folder it cannot enter) and
removed afterwards; as any other user it lives in ``tmp_path``.

The server helpers here are also used by ``tests/test_faults.py``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from conftest import tiny_tune_yaml
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from core.files import pid_alive
from experiments.cli import main as cli_main

#: Superuser of the throwaway cluster (trust authentication on 127.0.0.1 only).
PG_USER = "galaxy10"
SERVER_START_TIMEOUT_S = 180


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb, pg_ctl and postgres, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(x) if x.isdigit() else x for x in Path(p).parts[-3].split(".")],
    )
    for initdb in reversed(found):
        folder = Path(initdb).parent
        if all((folder / name).is_file() for name in ("pg_ctl", "postgres")):
            return folder
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


# --------------------------------------------------------------------------------------------------
# PostgreSQL


@dataclass(frozen=True)
class Postgres:
    """A running throwaway cluster: its postmaster pid and a SQLAlchemy URL of its ``optuna`` database."""

    url: str
    pid: int
    port: int
    data_dir: Path


@contextlib.contextmanager
def postgres_cluster(tmp_path: Path, database: str = "optuna") -> Iterator[Postgres]:
    """initdb + pg_ctl start on 127.0.0.1:<free port>, create ``database``; stop the postmaster by pid."""
    import psycopg2

    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (run .ci/install_postgres.sh)"
        )
    as_root = os.geteuid() == 0
    if as_root:
        owner = pwd.getpwnam("postgres")  # created by Debian's postgresql package
        root = Path(tempfile.mkdtemp(prefix="g10pg-"))  # short: the unix socket path must be < 108 bytes
        os.chown(root, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    else:
        root = tmp_path / "pg"
        root.mkdir()
        prefix = []
    data, sock, logfile = root / "data", root / "sock", root / "server.log"
    pid = None
    try:
        subprocess.run(prefix + ["mkdir", "-p", str(sock)], check=True)
        subprocess.run(
            prefix
            + [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = free_port()
        options = f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off -c max_connections=100"
        started = subprocess.run(
            prefix
            + [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w", "-t", "120", "-o", options, "start"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if (data / "postmaster.pid").is_file():
            pid = int((data / "postmaster.pid").read_text().split()[0])
        if started.returncode != 0:
            log_text = logfile.read_text() if logfile.is_file() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}{log_text[-2000:]}")
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {database}")
        finally:
            conn.close()
        yield Postgres(f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{port}/{database}", pid, port, data)
    finally:
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGINT)  # "fast" shutdown: disconnect clients, stop cleanly
            if not _wait_gone(pid, 30):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10)
        if as_root:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# MLflow tracking server


@dataclass
class MlflowServer:
    """A running ``mlflow server`` started by a test (own process group, so its workers stop with it)."""

    uri: str
    port: int
    backend: str
    artifacts: Path
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> MlflowServer:
        """Start the server and wait until ``/health`` answers."""
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend,
            "--artifacts-destination",
            str(self.artifacts),
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            if self.healthy():
                return self
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s: {self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def healthy(self) -> bool:
        """True when ``GET /health`` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server's process group (the server and its uvicorn/job-runner children) by its pid."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        pgid = proc.pid  # start_new_session=True: the server leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # children that ignored SIGTERM (and a parent that hangs on them)
        proc.wait(timeout=15)


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[MlflowServer]:
    """A started ``mlflow server`` on 127.0.0.1:<free port> with SQLite runs and artifacts under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = MlflowServer(
        uri=f"http://127.0.0.1:{port}",
        port=port,
        backend=f"sqlite:///{root / 'mlflow.db'}",
        artifacts=root / "artifacts",
        log=root / "server.log",
    )
    try:
        yield server.start()
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------
# The study


def write_tune_yaml(path: Path, *, name: str, n_trials: int) -> Path:
    """A tiny tuning config (48 px / crop 32, a two-layer CNN, 2 epochs, no pruning, 2 s heartbeat)."""
    return tiny_tune_yaml(
        path, experiment="scaleout", name=name, n_trials=n_trials, heartbeat_interval=2, grace_period=6
    )


def study_runs(client: MlflowClient, experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of an experiment."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("optuna.role") == "study"]
    # trial runs only: the study's refit of its best trial (issue 13) is a child run too
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags and r.data.tags.get("optuna.role") != "refit"]
    return parents, children


@pytest.mark.slow  # a PostgreSQL cluster, an MLflow server (~30 s to start) and 3 TensorFlow workers
def test_three_workers_share_a_postgres_study_and_an_mlflow_server(
    tiny_h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n_trials = 6
    config = write_tune_yaml(tmp_path / "tune.yaml", name="scale", n_trials=n_trials)
    with postgres_cluster(tmp_path) as pg, mlflow_server(tmp_path / "mlflow-server") as server:
        code = cli_main(
            [
                "tune",
                "--config",
                str(config),
                "--data",
                str(tiny_h5),
                "--workers",
                "3",
                "--storage",
                pg.url,
                "--tracking-uri",
                server.uri,
            ]
        )
        out, err = capsys.readouterr()
        assert code == 0, out + err
        assert "started 3 worker processes" in err

        # Optuna: every trial is in the PostgreSQL storage, numbered once, none left RUNNING or FAIL.
        study = optuna.load_study(study_name="scale", storage=pg.url)
        trials = study.get_trials()
        numbers = [t.number for t in trials]
        assert sorted(numbers) == list(range(len(trials)))
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * len(trials)
        assert len(trials) == n_trials  # the shared budget: no worker overshoots it
        assert study.user_attrs["mlflow_tracking_uri"] == server.uri
        assert f"study scale: {len(trials)} complete" in out

        # MLflow server: one parent run, one FINISHED child per trial with its metrics and artifacts.
        client = MlflowClient(server.uri)
        parents, children = study_runs(client, "scaleout")
        assert len(parents) == 1
        parent = parents[0]
        assert parent.info.run_id == study.user_attrs["mlflow_parent_run_id"]
        assert parent.info.status == "FINISHED"
        assert parent.data.params["study.storage"] == pg.url
        by_run = {r.info.run_id: r for r in children}
        assert len(by_run) == len(trials)
        assert set(by_run) == {t.user_attrs["mlflow_run_id"] for t in trials}
        workers = set()
        for trial in trials:
            child = by_run[trial.user_attrs["mlflow_run_id"]]
            assert child.data.tags[MLFLOW_PARENT_RUN_ID] == parent.info.run_id
            assert int(child.data.tags["optuna.trial_number"]) == trial.number
            assert child.info.status == "FINISHED" and child.data.tags["optuna.trial_state"] == "COMPLETE"
            assert child.data.metrics["val_accuracy"] == pytest.approx(trial.value)
            history = client.get_metric_history(child.info.run_id, "epoch_val_accuracy")
            assert sorted(m.step for m in history) == [1, 2]
            assert {m.step: m.value for m in history} == pytest.approx(dict(trial.intermediate_values))
            assert float(child.data.params["model.dropout"]) == pytest.approx(trial.params["model.dropout"])
            artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
            assert {"config.yaml", "learning_curves.png", "confusion_matrix_val.png"} <= artifacts, artifacts
            workers.add(child.data.tags["optuna.worker"])
        assert workers <= {"0", "1", "2"} and len(workers) >= 2, workers  # really run in parallel
        assert {"plots/optimization_history.png", "plots/param_importances.png"} <= {
            a.path for a in client.list_artifacts(parent.info.run_id, "plots")
        }

        # The best trial's model went through the server's artifact proxy and is registered there.
        best = study.best_trial
        champion = client.get_model_version_by_alias("scale", "champion")
        assert champion.run_id == best.user_attrs["mlflow_run_id"]
        stored = list((server.artifacts).rglob("MLmodel"))
        assert stored, "no model files reached the server's --artifacts-destination"
        meta_files = [p for p in server.artifacts.rglob("model_meta.json")]
        assert meta_files
