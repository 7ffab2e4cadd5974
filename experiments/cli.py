"""The ``galaxy10`` command line.

Each sub-command lives in ``experiments/commands/<name>.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and
returning an exit code). User errors (:class:`core.errors.Galaxy10Error`) become one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from core.errors import Galaxy10Error
from experiments.startup import quiet_startup

#: Sub-command modules under ``experiments.commands``, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "data",
    "baseline",
    "train",
    "tune",
    "study",
    "ensemble",
    "evaluate",
    "pretrain",
    "self-train",
    "predict",
    "catalog",
    "similar",
    "serve",
    "report",
)

log = logging.getLogger("galaxy10")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="galaxy10", description="Galaxy10 DECaLS morphology platform (data, training, tuning, ensembles, reports)."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"experiments.commands.{name.replace('-', '_')}")
        module.register(sub)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    if verbose < 2:
        for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "h5py", "absl", "git", "py4j"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _use_workspace(args: argparse.Namespace) -> None:
    """Build the command's :class:`~experiments.tracking.workspace.Workspace` (``args.ws``: ``--tracking-uri``,
    else ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``; ``--storage``) and make its store this process's MLflow
    default: the one place a ``galaxy10`` process sets it (MLflow also exports it to the environment, for
    worker processes). Library code takes the workspace and never changes the default."""
    if not hasattr(args, "tracking_uri"):
        return
    from experiments.commands.common import workspace
    from experiments.tracking.store import set_tracking_uri

    set_tracking_uri(workspace(args).tracking_uri)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``galaxy10`` console script; returns the process exit code."""
    quiet_startup()
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        _use_workspace(args)
        return int(args.func(args) or 0)
    except Galaxy10Error as err:
        print(f"galaxy10: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("galaxy10: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
