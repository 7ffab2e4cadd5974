"""Command-line arguments shared by several sub-commands, defined once."""
from __future__ import annotations

import argparse


def add_force_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--force``: write ``what`` over an output that galaxy10 did not write (never deletes other files)."""
    parser.add_argument("--force", action="store_true",
                        help=f"replace an existing --out that galaxy10 did not write with the {what}")
