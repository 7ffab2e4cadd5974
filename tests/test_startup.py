"""A quiet start on every CPU: TensorFlow's C-level start-up notes are dropped, real messages kept.

Whether TensorFlow prints its start-up notes depends on the CPU (oneDNN's note, absl's pre-init
warning), so these tests do not wait for a machine that prints them: a ``tensorflow`` package put first
on ``PYTHONPATH`` writes those exact lines to file descriptor 2 (as C code does), plus one line that is
not noise, and then loads the real TensorFlow in its place. Every command that imports TensorFlow runs
as a real subprocess with it; each must show the real line once and none of the notes. Without the
guard (``experiments.startup``) the notes come through on any machine, which the control test checks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SmokeModel, tiny_tune_yaml, write_galaxy10_h5
from PIL import Image

from experiments.startup import drop_noise, filtered_stderr, is_noise

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "configs" / "smoke.yaml"

#: What TensorFlow 2.21 wrote to stderr on import on a 2-core AMD EPYC with TF_CPP_MIN_LOG_LEVEL=3
#: (twice: two shared libraries log it), and the notes of the GPU wheels.
NOTES = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"I0000 00:00:1796415653.522755    2089 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders. "
    b"To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
    b"I0000 00:00:1796415653.564604    2089 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    b"available CPU instructions in performance-critical operations.\n"
    b"To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, "
    b"rebuild TensorFlow with the appropriate compiler flags.\n"
    b"E0000 00:00:1733000000.123456   12345 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to "
    b"register factory for plugin cuDNN when one has already been registered\n"
    b"W0000 00:00:1733000000.123456   12345 computation_placer.cc:177] computation placer already registered. "
    b"Please check linkage and avoid linking the same target more than once.\n"
)
#: A line the guard must pass on: a real error written to the C-level stderr during the import.
REAL = b"E0000 00:00:1733000000.5   4242 shim.cc:1] galaxy10-test: a real error the user must see\n"

#: A ``tensorflow`` package that writes the notes and the real line to fd 2, then becomes the real one.
SHIM = f"""
import importlib, os, sys
os.write(2, {NOTES + REAL!r})
_here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.environ.get("GALAXY10_TEST_FAKE_TF") == "1":
    __version__ = "fake"
else:
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    del sys.modules["tensorflow"]
    sys.modules["tensorflow"] = importlib.import_module("tensorflow")
"""


def noisy_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a subprocess whose ``import tensorflow`` goes through :data:`SHIM` first."""
    shim = root / "shim" / "tensorflow"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text(SHIM)
    (root / "tmp").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root / "shim"), str(REPO)]),
        "GALAXY10_CACHE": str(root / "cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TMPDIR": str(root / "tmp"),
    }
    env.pop("NO_ALBUMENTATIONS_UPDATE", None)  # the guard sets it
    env.update(extra)
    return env


def assert_quiet(stderr: bytes, *, imported_tf: bool = True) -> None:
    """No start-up note in ``stderr``; the real line exactly once per TensorFlow import (if any)."""
    lines = stderr.splitlines(keepends=True)
    notes = [line for line in NOTES.splitlines(keepends=True) if line in lines]
    assert notes == [], stderr.decode(errors="replace")[-3000:]
    if imported_tf:
        assert lines.count(REAL) >= 1, stderr.decode(errors="replace")[-3000:]


def galaxy10(args: list[str], root: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "experiments.cli", *args],
        cwd=root,
        env=env,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done


# ---------------------------------------------------------------------------------------------------
# The filter and the mechanism
# ---------------------------------------------------------------------------------------------------
def test_every_note_is_noise_and_real_lines_are_kept() -> None:
    for line in NOTES.splitlines():
        assert is_noise(line), line
    kept = drop_noise(
        b"before\n" + NOTES + REAL + b"W0000 00:00:1.0  1 gpu_device.cc:2] Cannot dlopen some GPU libraries.\nafter"
    )
    assert kept == b"before\n" + REAL + b"W0000 00:00:1.0  1 gpu_device.cc:2] Cannot dlopen some GPU libraries.\nafter"


def test_filtered_stderr_works_on_the_file_descriptor(capfd: pytest.CaptureFixture[str]) -> None:
    with filtered_stderr():
        os.write(2, NOTES + b"kept 1\n")
        with filtered_stderr():  # nested: forwarded once
            os.write(2, b"kept 2\n" + NOTES)
    assert capfd.readouterr().err == "kept 1\nkept 2\n"


def _import_in_subprocess(tmp_path: Path, guard: bool) -> subprocess.CompletedProcess:
    code = (
        "from experiments.startup import quiet_startup; quiet_startup(); " if guard else ""
    ) + "import tensorflow; print(tensorflow.__version__)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        env=noisy_env(tmp_path, GALAXY10_TEST_FAKE_TF="1"),
    )


def test_the_guard_drops_the_notes_a_guarded_import_writes_to_fd2(tmp_path: Path) -> None:
    done = _import_in_subprocess(tmp_path, guard=True)
    assert done.returncode == 0 and done.stdout == b"fake\n", done.stderr
    assert done.stderr == REAL


def test_without_the_guard_the_notes_come_through(tmp_path: Path) -> None:
    """The control: the shim is noisy on any CPU, so the tests above and below can fail anywhere."""
    done = _import_in_subprocess(tmp_path, guard=False)
    assert done.returncode == 0 and done.stdout == b"fake\n", done.stderr
    assert done.stderr == NOTES + REAL


# ---------------------------------------------------------------------------------------------------
# Every command, with the real TensorFlow behind the noisy shim
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a subprocess that imports TensorFlow
def test_predict_is_quiet(smoke_model: SmokeModel, tmp_path: Path) -> None:
    png = tmp_path / "g.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(png)
    env = noisy_env(tmp_path, MLFLOW_TRACKING_URI=smoke_model.tracking_uri)
    done = galaxy10(["-q", "predict", str(png), "--model", smoke_model.model_uri], tmp_path, env)
    assert done.stderr == REAL and b"probability" in done.stdout


def _ctrl_c_stops() -> None:
    """In the child before exec: SIGINT back to its default, so Python turns Ctrl-C into KeyboardInterrupt
    even when the test suite itself was started in the background (a shell's background jobs ignore
    SIGINT, and an ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow  # a subprocess that imports TensorFlow
def test_serve_is_quiet(smoke_model: SmokeModel, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = noisy_env(tmp_path, MLFLOW_TRACKING_URI=smoke_model.tracking_uri)
    err = tmp_path / "serve.err"
    with err.open("wb") as ferr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.cli",
                "-q",
                "serve",
                "--model",
                smoke_model.model_uri,
                "--port",
                str(port),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=ferr,
            stdin=subprocess.DEVNULL,
            preexec_fn=_ctrl_c_stops,
        )
    try:
        deadline, body = time.monotonic() + 240, None
        while body is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as reply:
                    body = reply.read()
            except OSError:
                time.sleep(0.5)
        assert body is not None, err.read_bytes().decode(errors="replace")[-3000:]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # say what it printed instead of hiding the first failure
            proc.kill()
            proc.wait()
            pytest.fail(
                "serve did not stop within 60 s of Ctrl-C; its stderr:\n"
                + err.read_bytes().decode(errors="replace")[-3000:]
            )
    assert_quiet(err.read_bytes())


@pytest.mark.slow  # a subprocess that imports TensorFlow and trains one epoch
def test_train_and_data_commands_are_quiet(tmp_path: Path) -> None:
    data = write_galaxy10_h5(tmp_path / "tiny.h5", n=120, size=48)
    env = noisy_env(tmp_path)
    for args in (
        ["data", "info", str(data)],
        ["data", "split", str(data)],
        ["data", "gallery", str(data), "--out", str(tmp_path / "gallery.png")],
    ):
        assert_quiet(galaxy10(args, tmp_path, env).stderr, imported_tf=False)
    done = galaxy10(["train", "--config", str(SMOKE), "--data", str(data), "--set", "train.epochs=1"], tmp_path, env)
    assert_quiet(done.stderr)


@pytest.mark.slow  # tune with two spawned workers, then ensemble and report, each a fresh process
def test_tune_workers_ensemble_and_report_are_quiet(tmp_path: Path) -> None:
    data = write_galaxy10_h5(tmp_path / "tiny.h5", n=200, size=48)
    env = noisy_env(tmp_path)
    config = tiny_tune_yaml(
        tmp_path / "tune.yaml", experiment="quiet", name="quiet", n_trials=2, epochs=1, log_models="all"
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    done = galaxy10(
        ["tune", "--config", str(config), "--data", str(data), "--workers", "2", "--storage", storage], tmp_path, env
    )
    assert_quiet(done.stderr)
    assert done.stderr.splitlines(keepends=True).count(REAL) >= 2  # both workers imported TensorFlow
    ens = tmp_path / "ens.yaml"
    ens.write_text(
        yaml.safe_dump(
            {
                "mode": "val_cv",
                "cv_folds": 2,
                "vote": {"top_k": 2, "weighted": None},
                "second_stage": {"logreg": {}},
                "stack": {"second_stage": []},
            }
        )
    )
    done = galaxy10(["ensemble", "--study", "quiet", "--config", str(ens), "--storage", storage], tmp_path, env)
    assert_quiet(done.stderr)
    done = galaxy10(
        ["report", "--study", "quiet", "--storage", storage, "--out", str(tmp_path / "report"), "--bootstrap", "50"],
        tmp_path,
        env,
    )
    assert_quiet(done.stderr)
