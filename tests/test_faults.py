"""Faults survived (issue 7): each fault is injected into the REAL command, then the command is re-run.

- a tune worker SIGKILLed mid-epoch (``galaxy10 tune --workers 2`` as a subprocess);
- the MLflow tracking server SIGKILLed mid-study, then brought back on the same port;
- a full disk while writing the preprocessing cache, the synthetic HDF5 file and the embedding
  cache (simulated ENOSPC in-process; also a real 1 MiB tmpfs in a private mount namespace where
  ``unshare`` allows it);
- ``galaxy10 ensemble`` SIGKILLed, then interrupted with SIGINT, while it logs its candidates.

Each test checks the command's message (one ``galaxy10: error:`` line, or the worker note), that
nothing half-written is left (no temporary file, no partial target, no run left RUNNING after the
re-run) and that re-running the same command completes the work with exactly one finished run per
trial / candidate. Every subprocess runs in its own session and is killed (process group) in a
``finally``; every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np
import optuna
import pytest
import yaml
from conftest import TinyStudy, tiny_study_in, tiny_tune_yaml
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import TrialState
from test_scaleout import mlflow_server

from experiments.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "configs" / "smoke.yaml"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
#: MLflow status of a trial's child run by the trial's final state.
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
T = TypeVar("T")


def write_tune_yaml(path: Path, *, name: str, n_trials: int, epochs: int) -> Path:
    """A tiny study: 48 px / crop 32, two conv layers, no pruning, 1 s heartbeat, 3 s grace period."""
    return tiny_tune_yaml(path, experiment="faults", name=name, n_trials=n_trials, epochs=epochs)


# --------------------------------------------------------------------------------------------------
# Running the real command as a subprocess


def cli_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``galaxy10`` subprocess: cache, tracking store and temp folder under ``root``."""
    (root / "tmp").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        "GALAXY10_CACHE": str(root / "cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TMPDIR": str(root / "tmp"),
    }
    env.update(extra)
    return env


@dataclass
class Command:
    """A ``galaxy10`` subprocess in its own session (its workers share its process group)."""

    proc: subprocess.Popen
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """The exit code; fails the test (after killing the group) if it runs past ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            pytest.fail(f"galaxy10 {self.proc.args[3:]} still running after {timeout:.0f} s:\n{self.stderr()[-3000:]}")

    def kill_group(self) -> None:
        kill_group(self.proc)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the command's whole process group (coordinator, spawned workers, resource tracker)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, so Python turns it into KeyboardInterrupt.

    A test run started in the background by a non-interactive shell (``make test &``, some CI
    runners) inherits SIGINT *ignored*, and Python then installs no Ctrl-C handler at all.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def galaxy10(
    args: list[str], *, cwd: Path, env: dict[str, str], name: str, pause_marker: Path | None = None
) -> Iterator[Command]:
    """Start ``python -m experiments.cli ARGS``; whatever happens, its process group is killed on exit.

    With ``pause_marker`` the command runs through :data:`PAUSE_AFTER_FIRST_CANDIDATE`: it stops for
    good right after logging its first ensemble candidate and writes that run's id to the marker, so a
    signal sent once the marker exists always lands mid-comparison, however fast or slow the machine.
    """
    out, err = cwd / f"{name}.out", cwd / f"{name}.err"
    argv = (
        [sys.executable, "-m", "experiments.cli", *args]
        if pause_marker is None
        else [sys.executable, "-c", PAUSE_AFTER_FIRST_CANDIDATE, str(pause_marker), *args]
    )
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            preexec_fn=default_sigint,
            stdout=fout,
            stderr=ferr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    cmd = Command(proc, out, err)
    try:
        yield cmd
    finally:
        cmd.kill_group()


#: ``sitecustomize`` for the subprocesses of a test (spawned tune workers included, they inherit
#: PYTHONPATH): every reported epoch of a trial takes at least ``GALAXY10_TEST_EPOCH_SECONDS``, so a
#: fault injected once an epoch was reported always lands mid-trial, however fast the machine (a
#: tiny epoch takes ~0.2 s).
SLOW_EPOCHS = """
import os, time
_seconds = float(os.environ.get("GALAXY10_TEST_EPOCH_SECONDS", "0"))
if _seconds > 0:
    from experiments.tuning import objective as _tuning
    _real = _tuning.pruning_callback
    def _slow(trial, metric):
        report = _real(trial, metric)
        def slow_report(epoch, metrics):
            report(epoch, metrics)
            time.sleep(_seconds)
        return slow_report
    _tuning.pruning_callback = _slow
"""


def slow_epochs(env: dict[str, str], root: Path, seconds: float) -> dict[str, str]:
    """``env`` with the :data:`SLOW_EPOCHS` hook on PYTHONPATH and each epoch at least ``seconds`` long."""
    hooks = root / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SLOW_EPOCHS)
    return {
        **env,
        "PYTHONPATH": os.pathsep.join([str(hooks), env["PYTHONPATH"]]),
        "GALAXY10_TEST_EPOCH_SECONDS": str(seconds),
    }


#: ``python -c`` program: the CLI with ``log_ensemble_model`` wrapped so that the first call
#: writes the candidate's run id to ``argv[1]`` and then sleeps (a signal ends the sleep).
PAUSE_AFTER_FIRST_CANDIDATE = """
import sys, time
from pathlib import Path
from experiments.cli import main
from experiments.ensembling import comparison
marker, real = Path(sys.argv[1]), comparison.log_ensemble_model
def paused(tracker, *args, **kwargs):
    uri = real(tracker, *args, **kwargs)
    if not marker.exists():
        marker.write_text(tracker.run_id)
        time.sleep(600)
    return uri
comparison.log_ensemble_model = paused
sys.exit(main(sys.argv[2:]))
"""


def wait_for(check: Callable[[], T | None], timeout: float, what: str, cmd: Command | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail if ``cmd`` ends or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if cmd is not None and cmd.proc.poll() is not None:
            pytest.fail(f"the command ended (exit {cmd.proc.returncode}) before {what}:\n{cmd.stderr()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s" + (f":\n{cmd.stderr()[-3000:]}" if cmd else ""))
        time.sleep(0.2)


def worker_pids(log: str) -> list[int] | None:
    """The pids from the coordinator's ``started K worker processes: p0, p1`` log line."""
    found = re.search(r"started \d+ worker processes: ([\d, ]+)", log)
    return [int(p) for p in found.group(1).split(",")] if found else None


def running_trial_with_epoch(db: Path, study: str) -> tuple[int, str] | None:
    """(number, MLflow run id) of a RUNNING trial of ``study`` that has reported an epoch, read from SQLite."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=1)) as conn:
            row = conn.execute(
                "SELECT t.number, a.value_json FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'mlflow_run_id' "
                "WHERE t.state = 'RUNNING' AND s.study_name = ? LIMIT 1",
                (study,),
            ).fetchone()
    except sqlite3.Error:  # tables not created yet, or a writer holds the lock
        return None
    return (int(row[0]), json.loads(row[1])) if row else None


def temp_files(root: Path) -> list[str]:
    """Files left by :func:`core.files.atomic_path` (``.<name>.<random><suffix>``) anywhere under ``root``."""
    return sorted(
        str(p.relative_to(root)) for p in root.rglob(".*") if p.is_file() and re.search(r"\.(tmp|keras)$", p.name)
    )


def ours(folder: Path) -> set[str]:
    """The platform's own temporary folders (``galaxy10-*``) in ``folder``."""
    return {p.name for p in folder.glob("galaxy10-*")}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("galaxy10: error:")]


# --------------------------------------------------------------------------------------------------
# Reading the outcome back


def study_children(client: MlflowClient, experiment: str, study: str) -> tuple[list, list]:
    """(parent runs, trial child runs) of ``study`` in ``experiment``."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`optuna.study` = '{study}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("optuna.role") == "study"]
    # trial runs only: the study's refit of its best trial (issue 13) is a child run too
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags and r.data.tags.get("optuna.role") != "refit"]
    return parents, children


def assert_one_run_per_trial(study: optuna.Study, client: MlflowClient, experiment: str) -> None:
    """Exactly one child run per trial, in the state matching the trial's; nothing left RUNNING."""
    parents, children = study_children(client, experiment, study.study_name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.run_id == study.user_attrs["mlflow_parent_run_id"]
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == [t.number for t in study.trials], "a trial with no run, or with two"
    by_id = {r.info.run_id: r for r in children}
    for trial in study.trials:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.info.status == RUN_STATUS[trial.state], (trial.number, trial.state, run.info.status)
        assert run.data.tags["optuna.trial_state"] == trial.state.name
        assert run.data.tags[MLFLOW_PARENT_RUN_ID] == parents[0].info.run_id


# --------------------------------------------------------------------------------------------------
# 1. A tune worker SIGKILLed mid-epoch


@pytest.mark.slow  # two spawned TensorFlow workers, three tiny trials, then a re-run
def test_sigkilled_tune_worker_fails_its_trial_and_the_rerun_adds_no_duplicates(tiny_h5: Path, tmp_path: Path) -> None:
    config = write_tune_yaml(tmp_path / "tune.yaml", name="kw", n_trials=2, epochs=6)
    args = ["tune", "--config", str(config), "--data", str(tiny_h5), "--workers", "2"]
    env = cli_env(tmp_path)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    with galaxy10(args, cwd=tmp_path, env=slow_epochs(env, tmp_path, 1.0), name="tune1") as cmd:
        pids = wait_for(lambda: worker_pids(cmd.stderr()), 180, "worker pids in the log", cmd)
        number, run_id = wait_for(
            lambda: running_trial_with_epoch(tmp_path / "optuna.db", "kw"),
            180,
            "RUNNING trial with a reported epoch",
            cmd,
        )
        worker = int(client.get_run(run_id).data.tags["optuna.worker"])
        os.kill(pids[worker], signal.SIGKILL)
        code = cmd.wait(300)
    out, err = cmd.stdout(), cmd.stderr()
    # The surviving worker fails the stale trial, retries its parameters and finishes the study;
    # the command still says a worker died and exits 1.
    assert code == 1, err[-3000:]
    assert (
        f"note: worker {worker} died (killed by SIGKILL; its trial fails once its heartbeat is stale and is retried)"
    ) in out
    assert "Traceback" not in err
    study = optuna.load_study(study_name="kw", storage="sqlite:///optuna.db")
    killed = study.trials[number]
    assert killed.state == TrialState.FAIL
    assert len(killed.intermediate_values) >= 1  # it really was killed mid-training
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
    assert len(retries) == 1 and retries[0].params == killed.params and retries[0].state in COUNTED
    assert len(study.get_trials(states=COUNTED)) == 2 and len(study.trials) == 3
    dead = client.get_run(run_id)
    assert dead.info.status == "FAILED"
    assert dead.data.tags["optuna.fail_reason"] == "stale heartbeat: the worker process stopped"
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FAILED"

    # The same command again: nothing left to run, the parent run is reopened and finished.
    with galaxy10(args, cwd=tmp_path, env=env, name="tune2") as cmd:
        code = cmd.wait(300)
    assert code == 0, cmd.stderr()[-3000:]
    assert re.search(r"study kw: 2 complete, 1 fail \(0 new this run", cmd.stdout())
    study = optuna.load_study(study_name="kw", storage="sqlite:///optuna.db")
    assert len(study.trials) == 3
    assert_one_run_per_trial(study, client, "faults")
    assert temp_files(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# 2. The MLflow tracking server killed mid-study


@pytest.mark.slow  # an MLflow server started three times (10-30 s each) and two tiny studies
def test_tracking_server_killed_mid_study(tiny_h5: Path, tmp_path: Path) -> None:
    config = write_tune_yaml(tmp_path / "tune.yaml", name="srv", n_trials=2, epochs=6)
    db = tmp_path / "optuna.db"
    with mlflow_server(tmp_path / "server") as server:
        args = ["tune", "--config", str(config), "--data", str(tiny_h5), "--tracking-uri", server.uri]
        client = MlflowClient(server.uri)

        # Run 1, no client retries: the outage fails the command with one line, no traceback.
        env = cli_env(tmp_path, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
        with galaxy10(args, cwd=tmp_path, env=slow_epochs(env, tmp_path, 1.0), name="tune1") as cmd:
            number, run_id = wait_for(
                lambda: running_trial_with_epoch(db, "srv"), 240, "RUNNING trial with a reported epoch", cmd
            )
            server.stop(signal.SIGKILL)
            code = cmd.wait(180)
        err = cmd.stderr()
        assert code == 2, err[-3000:]
        assert error_lines(err) == [
            f"galaxy10: error: MLflow tracking server {server.uri} is unreachable (connection refused, after the "
            "client's retries); start it again or fix --tracking-uri / MLFLOW_TRACKING_URI, then re-run the same "
            "command to continue"
        ]
        assert err.rstrip().splitlines()[-1].startswith("galaxy10: error:") and "Traceback" not in err
        assert optuna.load_study(study_name="srv", storage=f"sqlite:///{db}").trials[number].state == TrialState.FAIL

        server.start()  # same port, same backend store
        left = client.get_run(run_id)
        assert left.info.status == "RUNNING"  # the server was gone when the trial ended

        # Run 2 (the same command), with the client's retries: the server is killed and restarted
        # mid-trial again, and the command rides it out.
        env = cli_env(
            tmp_path,
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="7",
            MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
            MLFLOW_HTTP_REQUEST_TIMEOUT="30",
        )
        with galaxy10(args, cwd=tmp_path, env=slow_epochs(env, tmp_path, 1.0), name="tune2") as cmd:
            wait_for(lambda: running_trial_with_epoch(db, "srv"), 240, "RUNNING trial with a reported epoch", cmd)
            server.stop(signal.SIGKILL)
            server.start()
            code = cmd.wait(300)
        out, err = cmd.stdout(), cmd.stderr()
        assert code == 0, err[-3000:]
        assert error_lines(err) == [] and "Traceback" not in err
        assert f"closed the MLflow runs of ended trial(s) [{number}] that were left RUNNING" in err
        study = optuna.load_study(study_name="srv", storage=f"sqlite:///{db}")
        assert len(study.get_trials(states=COUNTED)) == 2 and len(study.trials) == 3
        assert re.search(r"study srv: 2 complete, 1 fail \(2 new this run", out)
        assert_one_run_per_trial(study, client, "faults")
        closed = client.get_run(run_id)
        assert closed.info.status == "FAILED" and "left RUNNING" in closed.data.tags["optuna.closed_late"]
        champion = client.get_model_version_by_alias("srv", "champion")
        assert champion.run_id == study.best_trial.user_attrs["mlflow_run_id"]
    assert temp_files(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# 3. A full disk during cache and HDF5 writes


def _write_then_fail(path: Path) -> None:
    """What a write into a nearly full disk does: some bytes land, then ENOSPC."""
    with open(path, "r+b") as fh:
        fh.write(b"\x93NUMPY partial")
    raise ENOSPC


def test_full_disk_during_the_preprocessing_cache(
    tiny_h5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines import preprocess

    args = ["-q", "train", "--config", str(SMOKE), "--data", str(tiny_h5), "--set", "train.epochs=1", "--no-log-model"]
    cache = tmp_path / "cache"
    calls: list[Path] = []

    def full_disk(tmp: Path) -> None:
        calls.append(Path(tmp))
        _write_then_fail(Path(tmp))

    with monkeypatch.context() as mp:
        mp.setattr(preprocess, "reserve_space", full_disk)
        assert cli_main(args) == 2
    err = capsys.readouterr().err
    target = preprocess.cache_path_for(_fingerprint(tiny_h5), 48, None, cache)
    assert error_lines(err) == [
        f"galaxy10: error: cannot write the image cache {target} (No space left on device); "
        f"free space in {cache} or point GALAXY10_CACHE at a folder with room"
    ]
    assert "Traceback" not in err and len(calls) == 1
    assert calls[0].parent == cache and not calls[0].exists()  # the temporary file was removed
    assert not list(cache.glob("resized_*")) and temp_files(tmp_path) == []
    assert not (tmp_path / "mlflow.db").exists()  # it failed before any MLflow run was opened

    assert cli_main(args) == 0
    assert target.is_file() and temp_files(tmp_path) == []
    clean = preprocess.load_resized(tiny_h5, size=48, cache_dir=tmp_path / "clean")
    np.testing.assert_array_equal(np.load(target), clean)


def _fingerprint(path: Path) -> str:
    from pipelines.reader import data_fingerprint

    return data_fingerprint(path)


def test_full_disk_during_data_synth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["-q", "data", "synth", "--n", "40", "--size", "32", "--workers", "1", "--seed", "3"]
    writes = []
    real_setitem = h5py.Dataset.__setitem__

    def fills_up(self: h5py.Dataset, key: Any, value: Any) -> None:
        writes.append(self.name)
        if len(writes) > 1:  # the first block of images lands, the second finds the disk full
            raise ENOSPC
        real_setitem(self, key, value)

    out = tmp_path / "data" / "synth.h5"
    with monkeypatch.context() as mp:
        mp.setattr(h5py.Dataset, "__setitem__", fills_up)
        assert cli_main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [
        f"galaxy10: error: cannot write {out} (No space left on device); check the free "
        f"space and permissions of {out.parent} or choose another --out"
    ]
    assert writes == ["/images", "/images"] and "Traceback" not in err
    assert list(out.parent.iterdir()) == []  # no temporary file, no partial target

    assert cli_main([*args, "--out", str(out)]) == 0
    assert cli_main([*args, "--out", str(tmp_path / "clean.h5")]) == 0
    with h5py.File(out) as got, h5py.File(tmp_path / "clean.h5") as want:
        assert set(got) == set(want) == {"images", "ans", "ra", "dec", "redshift", "pxscale"}
        for key in want:
            np.testing.assert_array_equal(got[key][()], want[key][()])
        assert dict(got.attrs) == dict(want.attrs)
    assert sorted(p.name for p in out.parent.iterdir()) == ["synth.h5"]


# --- a real full disk: a 1 MiB tmpfs in a private mount namespace ---------------------------------


def _unshare_prefix() -> list[str]:
    return ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--mount", "--map-root-user"]


@pytest.fixture(scope="module")
def tiny_disk_ok(tmp_path_factory: pytest.TempPathFactory) -> bool:
    """Whether this machine lets a process mount a tmpfs in its own mount namespace (skip otherwise)."""
    probe = tmp_path_factory.mktemp("probe")
    if shutil.which("unshare") is None:
        pytest.skip("no `unshare` to make a private mount namespace for a real tiny file system")
    done = subprocess.run(
        [*_unshare_prefix(), "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs '{probe}'"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here ({done.stderr.strip()[:200]})")
    return True


def on_tiny_disk(disk: Path, command: str, *, cwd: Path, env: dict[str, str]) -> tuple[int, str, list[str]]:
    """Run ``command`` (sh) with a 1 MiB tmpfs mounted on ``disk``; return (exit code, stderr, files left)."""
    script = (
        f"mount -t tmpfs -o size=1m tmpfs '{disk}' || exit 99\n{command}\ncode=$?\n"
        f"echo '--- left:'\ncd '{disk}' && find . -type f | sort\nexit $code\n"
    )
    done = subprocess.run(
        [*_unshare_prefix(), "sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 99, done.stderr
    left = done.stdout.split("--- left:\n", 1)[1].split()
    return done.returncode, done.stderr, left


@pytest.mark.slow  # two real commands, one of them importing TensorFlow
def test_a_real_full_disk(tiny_disk_ok: bool, tiny_h5: Path, tmp_path: Path) -> None:
    """On a real 1 MiB file system: before the fixes, the cache write died of SIGBUS (exit 135, temp
    file left filling the disk) and ``data synth`` segfaulted (exit 139) after its message."""
    disk = tmp_path / "disk"
    disk.mkdir()
    py = f"'{sys.executable}' -m experiments.cli -q"
    env = cli_env(tmp_path, GALAXY10_CACHE=str(disk / "cache"))
    code, err, left = on_tiny_disk(
        disk, f"{py} data synth --n 400 --size 64 --workers 1 --out '{disk}/x.h5'", cwd=tmp_path, env=env
    )
    assert code == 2, err[-3000:]
    # since issue 11 the file's size is estimated against the free space first (the write-path ENOSPC is
    # simulated in test_full_disk_during_data_synth)
    assert error_lines(err) == [
        f"galaxy10: error: --n 400 images of 64 px need about 3.6 MiB but {disk} has "
        "1.0 MiB free; render fewer or smaller images, or choose another --out"
    ]
    assert "Traceback" not in err and left == []

    code, err, left = on_tiny_disk(
        disk, f"{py} train --config '{SMOKE}' --data '{tiny_h5}' --set train.epochs=1", cwd=tmp_path, env=env
    )
    assert code == 2, err[-3000:]
    [line] = error_lines(err)
    cache = re.escape(str(disk / "cache"))
    assert re.fullmatch(
        rf"galaxy10: error: cannot write the image cache {cache}/resized_\w+_s48_nocrop_v1\.npy "
        rf"\(No space left on device\); free space in {cache} or point GALAXY10_CACHE at a "
        "folder with room",
        line,
    ), line
    assert "Traceback" not in err
    assert [f for f in left if "resized" in f or f.endswith(".tmp")] == []


# --------------------------------------------------------------------------------------------------
# A tiny study for the ensemble tests (3 one-epoch trials, every trial logs its model)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyStudy]:
    with tiny_study_in(tmp_path_factory.mktemp("fault_study")) as study:
        yield study


@pytest.mark.slow  # needs the tiny study (three trainings) and a comparison run
def test_full_disk_during_the_embedding_cache(
    tiny_study: TinyStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ensembles.embeddings import CNNEmbedder
    from experiments.ensembling.members import load_study_data, study_members
    from experiments.tracking.loading import load_keras_model
    from experiments.tracking.runs import find_runs
    from experiments.tracking.workspace import Workspace

    config = tmp_path / "ens.yaml"
    config.write_text(
        yaml.safe_dump(
            {"mode": "val_cv", "cv_folds": 3, "vote": {"top_k": 1, "weighted": None}, "second_stage": {"logreg": {}}}
        )
    )
    args = [
        "-q",
        "ensemble",
        "--study",
        "tiny",
        "--config",
        str(config),
        "--storage",
        tiny_study.storage,
        "--tracking-uri",
        tiny_study.tracking_uri,
    ]
    client = MlflowClient(tiny_study.tracking_uri)

    def comparisons() -> set[str]:
        return {r.run_id for r in find_runs({"ensemble.role": "comparison"}, ws=tiny_study.ws)}

    before = comparisons()

    def full_disk(file: Any, *arrays: Any, **named: Any) -> None:
        file.write(b"PK\x03\x04 partial zip")
        raise ENOSPC

    with monkeypatch.context() as mp:
        mp.setattr(np, "savez", full_disk)
        assert cli_main(args) == 2
    err = capsys.readouterr().err
    [line] = error_lines(err)
    folder = tmp_path / "cache" / "embeddings"
    where = re.escape(str(folder))
    assert re.fullmatch(
        rf"galaxy10: error: cannot write the embedding cache {where}/(\w+)/val-\w+-tta0-\w+\.npz "
        rf"\(No space left on device\); free space in {where}/\1 or point GALAXY10_CACHE at a folder "
        "with room",
        line,
    ), line
    assert "Traceback" not in err
    assert [p for p in folder.rglob("*") if p.is_file()] == [] and temp_files(tmp_path) == []
    assert comparisons() == before  # it failed before the comparison run was opened

    assert cli_main(args) == 0
    new = comparisons() - before
    assert len(new) == 1
    children = client.search_runs(
        [client.get_run(next(iter(new))).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{next(iter(new))}'",
    )
    assert sorted(c.info.run_name for c in children) == ["cnn-best", "gbm-logreg"]
    assert {c.info.status for c in children} == {"FINISHED"}
    [cached] = [p for p in folder.rglob("*") if p.is_file()]
    assert temp_files(tmp_path) == []
    # The cache written by the re-run holds what a clean computation gives.
    members = study_members("tiny", ws=tiny_study.ws, top_k=1)
    data = load_study_data(members, None)
    model = load_keras_model(members.best.model_uri, ws=Workspace()).model
    fresh = (
        CNNEmbedder(model, model_id=members.best.run_id, cache_dir=False)
        .fit()
        .embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint)
    )
    with np.load(cached) as f:
        np.testing.assert_allclose(f["embeddings"], fresh.embeddings, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f["probs"], fresh.probs, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# 4. galaxy10 ensemble killed, then interrupted, while it fits and logs its candidates

CANDIDATES = ["cnn-best", "gbm-logreg", "vote-crossfit2", "vote-top2"]


@pytest.mark.slow  # three real `galaxy10 ensemble` commands (TensorFlow start-up, 2-fold cross-fitting)
def test_interrupted_ensemble(tiny_study: TinyStudy, tmp_path: Path) -> None:
    config = tmp_path / "ens.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mode": "crossfit",
                "cv_folds": 3,
                "crossfit": {"folds": 2},
                "vote": {"top_k": 2, "weighted": None},
                "second_stage": {"logreg": {}},
            }
        )
    )
    args = [
        "ensemble",
        "--study",
        "tiny",
        "--config",
        str(config),
        "--storage",
        tiny_study.storage,
        "--tracking-uri",
        tiny_study.tracking_uri,
    ]
    env = cli_env(tmp_path, MLFLOW_TRACKING_URI=tiny_study.tracking_uri)
    client = MlflowClient(tiny_study.tracking_uri)
    experiment = client.get_experiment_by_name("galaxy10-smoke").experiment_id

    def comparison_runs() -> dict[str, Any]:
        runs = client.search_runs([experiment], filter_string="tags.`ensemble.role` = 'comparison'")
        return {r.info.run_id: r for r in runs}

    def children(parent: str) -> list:
        return client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")

    def new_comparison_with_a_candidate(known: set[str]) -> str | None:
        for run_id in set(comparison_runs()) - known:
            if children(run_id):
                return run_id
        return None

    # SIGKILL while the candidates are being logged: nothing can end the runs.
    known = set(comparison_runs())
    marker = tmp_path / "ens1.paused"
    with galaxy10(args, cwd=tmp_path, env=env, name="ens1", pause_marker=marker) as cmd:
        wait_for(marker.exists, 300, "the first candidate logged", cmd)
        killed = wait_for(lambda: new_comparison_with_a_candidate(known), 60, "candidate run", cmd)
        cmd.proc.send_signal(signal.SIGKILL)
        assert cmd.wait(60) == -signal.SIGKILL
    assert client.get_run(killed).info.status == "RUNNING"  # and so is the candidate being logged, if any
    assert temp_files(tmp_path) == []  # the fold models and embeddings were complete or not there
    folds = sorted(p.name for p in (tmp_path / "cache" / "crossfit").rglob("fold*"))
    assert folds == ["fold0.json", "fold0.keras", "fold1.json", "fold1.keras"]

    # SIGINT while the candidates are being logged: the command ends its runs KILLED.
    known = set(comparison_runs())
    tmp_before = ours(tmp_path / "tmp")
    marker = tmp_path / "ens2.paused"
    with galaxy10(args, cwd=tmp_path, env=env, name="ens2", pause_marker=marker) as cmd:
        wait_for(marker.exists, 300, "the first candidate logged", cmd)
        interrupted = wait_for(lambda: new_comparison_with_a_candidate(known), 60, "candidate run", cmd)
        cmd.proc.send_signal(signal.SIGINT)
        code = cmd.wait(120)
    err = cmd.stderr()
    assert code == 130, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "galaxy10: interrupted" and "Traceback" not in err
    assert re.search(
        rf"ensemble comparison run {killed} of study tiny was left RUNNING by process \d+, which is "
        "gone; marked it and its unfinished candidate runs FAILED",
        err,
    )
    assert client.get_run(killed).info.status == "FAILED"
    assert {c.info.status for c in children(killed)} <= {"FINISHED", "FAILED"}
    assert all(c.data.tags.get("ensemble.fail_reason") for c in children(killed) if c.info.status == "FAILED")
    assert client.get_run(interrupted).info.status == "KILLED"
    statuses = [c.info.status for c in children(interrupted)]
    assert statuses and set(statuses) <= {"FINISHED", "KILLED"}
    assert ours(tmp_path / "tmp") == tmp_before  # the temporary model folders were removed on Ctrl-C
    assert temp_files(tmp_path) == []
    assert "reusing the cached fold model" in err

    # The same command completes: one FINISHED run per candidate, the winner registered from it.
    known = set(comparison_runs())
    with galaxy10(args, cwd=tmp_path, env=env, name="ens3") as cmd:
        code = cmd.wait(300)
    assert code == 0, cmd.stderr()[-3000:]
    [done] = set(comparison_runs()) - known
    final = client.get_run(done)
    assert final.info.status == "FINISHED" and final.data.metrics["crossfit_cached_folds"] == 2
    runs = children(done)
    assert sorted(r.info.run_name for r in runs) == CANDIDATES
    assert {r.info.status for r in runs} == {"FINISHED"}
    winner = client.get_model_version_by_alias("tiny-ensemble", "champion")
    assert winner.run_id == final.data.tags["winner.run_id"] and winner.run_id in {r.info.run_id for r in runs}
    assert not [r for r in comparison_runs().values() if r.info.status == "RUNNING"]
    assert temp_files(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# A writer SIGKILLed in the middle of a write: its temporary file is removed by the next write

WRITER = """
import sys, time
from pathlib import Path
from core.files import atomic_path
with atomic_path(Path(sys.argv[1]), suffix=".npy.tmp") as tmp:
    tmp.write_bytes(b"half" * 1000)
    print(tmp, flush=True)
    time.sleep(120)
"""


def test_temp_file_of_a_sigkilled_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    from core.files import atomic_path

    target = tmp_path / "cache" / "images.npy"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        tmp = Path(proc.stdout.readline().strip())  # the writer is now inside the block
        assert tmp.is_file() and tmp.parent == target.parent
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert tmp.is_file() and not target.exists()  # SIGKILL: nothing could clean up, nothing renamed
    live = target.parent / f".{target.name}.pid{os.getpid()}@otherhost.abc.npy.tmp"
    live.write_bytes(b"another host's writer")  # same name pattern, another host: never touched

    with atomic_path(target, suffix=".npy.tmp") as fresh:
        fresh.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert not tmp.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, live.name])
