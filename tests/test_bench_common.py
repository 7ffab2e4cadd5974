"""``benchmarks/common.py``: ``--full`` fills only the options not given on the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import add_full_flag, parse_with_full  # noqa: E402


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["--full"], (3, 5)),
        (["--full", "--repeats", "1"], (1, 5)),  # explicit, though equal to the quick default
        (["--full", "--repeats=1", "--folds", "4"], (1, 4)),
        (["--repeats", "2"], (2, 3)),
    ],
)
def test_full_fills_only_what_was_not_given(argv: list[str], want: tuple[int, int]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--folds", type=int, default=3)
    add_full_flag(parser, {"repeats": 3, "folds": 5})
    args = parse_with_full(parser, argv)
    assert (args.repeats, args.folds) == want
