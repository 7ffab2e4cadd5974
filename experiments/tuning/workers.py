"""Worker processes: spawned, logged in our format, stopped cleanly on Ctrl-C, deaths reported."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
from dataclasses import replace
from typing import Any

import optuna

from core import errors
from core.errors import Galaxy10Error, first_line
from experiments.startup import quiet_startup
from experiments.tracking.faults import server_errors
from experiments.tuning.objective import StudyRun, TrialWorker

log = logging.getLogger(__name__)


def _configure_worker_logging(run: StudyRun) -> None:
    logging.basicConfig(
        level=run.log_level,
        force=True,
        format=f"%(asctime)s %(levelname)-7s [worker {run.worker}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "h5py", "absl", "git"):
        logging.getLogger(noisy).setLevel(max(run.log_level, logging.WARNING))
    route_optuna_logging(run.log_level)


class _UserErrorsWithoutTraceback(logging.Filter):
    """Optuna logs a failed trial's exception with its traceback; a user error's one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Galaxy10Error):
            record.exc_info, record.exc_text = None, None
        return True


def route_optuna_logging(level: int) -> None:
    """Send Optuna's log records through the root logger (our format) at ``level`` or above."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(max(level, logging.INFO))
    for handler in logging.getLogger().handlers:  # logger filters do not reach Optuna's child loggers
        if not any(isinstance(f, _UserErrorsWithoutTraceback) for f in handler.filters):
            handler.addFilter(_UserErrorsWithoutTraceback())


def worker_main(run: StudyRun, stop: Any = None, claim: Any = None) -> int:
    """Entry point of a spawned worker process: join the study and run trials; return how many."""
    quiet_startup()
    _configure_worker_logging(run)
    with server_errors(run.ws.tracking_uri):
        return TrialWorker(run, stop, claim).loop()


def _worker_entry(run: StudyRun, results: Any, stop: Any, claim: Any) -> None:
    """Spawned process body: run :func:`worker_main` and report the outcome on ``results``."""
    try:
        results.put((run.worker, "ok", worker_main(run, stop, claim), ""))
    except KeyboardInterrupt:
        results.put((run.worker, "interrupted", 0, ""))
    except Galaxy10Error as err:
        results.put((run.worker, type(err).__name__, 0, str(err)))
    except BaseException as err:  # noqa: BLE001 - reported to the coordinator, then re-raised
        log.exception("worker %d crashed", run.worker)
        results.put((run.worker, "crash", 0, f"{type(err).__name__}: {first_line(err)}"))
        raise


def _stop_workers(procs: list[Any], stop: Any) -> None:
    """After Ctrl-C: let the workers fail their trials and exit; interrupt or end those still running.

    A terminal's Ctrl-C reaches every worker already; a SIGINT sent to the coordinator alone does not,
    and one that lands inside library code may be swallowed, so ``stop`` also tells every worker not
    to start another trial.
    """
    stop.set()
    for p in procs:
        p.join(timeout=5)
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGINT)
    for p in procs:
        p.join(timeout=60)
    for p in procs:
        if p.is_alive():
            log.warning("worker %s did not stop after Ctrl-C; terminating it (its trial fails as stale)", p.pid)
            p.terminate()
            p.join(timeout=10)


def _death(exitcode: int | None) -> str:
    """How a worker that reported nothing ended: ``killed by SIGKILL; ...`` or ``exit code 1``."""
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return (
                f"killed by {signal.Signals(-exitcode).name}; its trial fails once its heartbeat is stale "
                "and is retried"
            )
    return f"exit code {exitcode}"


def run_workers(run: StudyRun, workers: int) -> tuple[int, list[str]]:
    """Run ``workers`` spawned processes on the study; return (trials run, problems)."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold TensorFlow threads
    results = ctx.Queue()
    stop = ctx.Event()
    claim = ctx.Lock()  # the study's budget check and the new trial, one worker at a time
    procs = [
        ctx.Process(
            target=_worker_entry, args=(replace(run, worker=i), results, stop, claim), name=f"galaxy10-worker-{i}"
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    log.info("started %d worker processes: %s", workers, ", ".join(str(p.pid) for p in procs))
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        _stop_workers(procs, stop)
        raise
    outcomes: dict[int, tuple[str, int, str]] = {}
    while True:
        try:
            worker, kind, n, message = results.get(timeout=0.5)
        except queue.Empty:
            break
        outcomes[worker] = (kind, n, message)
    total, problems = 0, []
    for i, p in enumerate(procs):
        kind, n, message = outcomes.get(i, ("died", 0, _death(p.exitcode)))
        total += n
        if kind == "ok":
            continue
        if hasattr(errors, kind) and isinstance(getattr(errors, kind), type):
            raise getattr(errors, kind)(message)  # a user error: one line, same class
        if kind == "interrupted":
            raise KeyboardInterrupt
        problems.append(f"worker {i} {kind} ({message})")
    return total, problems
