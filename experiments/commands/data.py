"""``galaxy10 data ...``: the data sub-commands (info, import, synth, gallery, split)."""

from __future__ import annotations

import argparse
import importlib

#: Modules under ``experiments.commands`` that add ``data`` sub-commands via ``register(data_sub)``.
DATA_COMMAND_MODULES: tuple[str, ...] = (
    "data_info_import",  # info, import
    "data_synth",  # synth, gallery
    "data_split",  # split
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 data`` and its sub-commands."""
    parser = subparsers.add_parser("data", help="inspect, import, synthesise and split Galaxy10 data")
    data_sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_sub.required = True
    for name in DATA_COMMAND_MODULES:
        importlib.import_module(f"experiments.commands.{name}").register(data_sub)
