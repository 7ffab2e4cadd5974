"""Command-line arguments shared by several sub-commands, defined once (same name, meaning and help)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from core.paths import DEFAULT_STORAGE

if TYPE_CHECKING:
    from experiments.tracking.workspace import Workspace

TRACKING_URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
DATA_HELP = "Galaxy10-schema HDF5 file (default: data/Galaxy10_DECals.h5 if present, else data/galaxy10_synthetic.h5)"


def add_force_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--force``: write ``what`` over an output that galaxy10 did not write (never deletes other files)."""
    parser.add_argument(
        "--force", action="store_true", help=f"replace an existing --out that galaxy10 did not write with the {what}"
    )


def workspace(args: argparse.Namespace) -> Workspace:
    """The command's workspace: the one ``galaxy10``'s entry built (``args.ws``), else one built from
    ``--tracking-uri`` / ``--storage`` (a caller that runs a command's ``run`` directly)."""
    from experiments.tracking.workspace import Workspace

    if getattr(args, "ws", None) is None:
        args.ws = Workspace(
            tracking_uri=getattr(args, "tracking_uri", None) or "", storage_url=getattr(args, "storage", None)
        )
    return args.ws


def add_tracking_uri_argument(parser: argparse.ArgumentParser) -> None:
    """``--tracking-uri``: the MLflow store every part of the command uses."""
    parser.add_argument("--tracking-uri", default=None, metavar="URI", help=TRACKING_URI_HELP)


def add_storage_argument(parser: argparse.ArgumentParser, default: str | None = DEFAULT_STORAGE) -> None:
    """``--storage``: the Optuna storage URL (``default`` None: the config's ``study.storage``)."""
    shown = f"default: {default}" if default else f"default: study.storage, else {DEFAULT_STORAGE}"
    parser.add_argument("--storage", default=default, metavar="URL", help=f"Optuna storage URL ({shown})")


def add_study_argument(parser: argparse.ArgumentParser) -> None:
    """``--study``: a study made by ``galaxy10 tune`` (required)."""
    parser.add_argument("--study", required=True, help="name of a study made by `galaxy10 tune`")


def add_data_argument(parser: argparse.ArgumentParser, *, study: bool = False, help: str | None = None) -> None:
    """``--data``: the data file (``study``: the study's own file, only when it moved)."""
    if study:
        help = "the study's data file, if it moved since the study ran (its fingerprint must match)"
    parser.add_argument("--data", default=None, metavar="FILE", help=help or DATA_HELP)


def add_overrides_argument(parser: argparse.ArgumentParser, what: str, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable): override ``what``; values are YAML."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override {what}, e.g. --set {example} (repeatable; values are YAML)",
    )


def add_json_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json``: print ``what`` as JSON."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")
