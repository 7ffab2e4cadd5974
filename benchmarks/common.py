"""What every benchmark script shares: quick defaults, ``--full`` and a small synthetic default bed.

Each ``bench_*.py`` runs with defaults that finish in a few minutes on 2 CPU cores (``make bench`` runs
them all). ``--full`` switches to the settings ``docs/BENCHMARKS.md`` quotes; options given explicitly
on the command line win over both.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.startup import quiet_startup  # noqa: E402

quiet_startup()

REALSAMPLES = ROOT.parent / "shared" / "data" / "realsamples"


def add_full_flag(parser: argparse.ArgumentParser, full: dict[str, object]) -> None:
    """Add ``--full``: the settings of the published runs (``full``, by option dest) where not given."""
    shown = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in full.items())
    parser.add_argument("--full", action="store_true", help=f"the published settings: {shown}")
    parser.set_defaults(_full_settings=full)


def parse_with_full(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse; with ``--full``, every option still at its quick default takes its full value."""
    args = parser.parse_args(argv)
    if getattr(args, "full", False):
        for dest, value in args._full_settings.items():
            if getattr(args, dest) == parser.get_default(dest):
                setattr(args, dest, value)
    return args


def synthetic_bed(folder: Path, *, n: int = 600, size: int = 128, seed: int = 0) -> Path:
    """Render a small SYNTHETIC Galaxy10-like file into ``folder`` (the default bed without ``--data``)."""
    from pipelines.synthetic import render_dataset

    path = folder / f"synthetic-{n}-{size}px-seed{seed}.h5"
    print(f"data: rendering {n} SYNTHETIC images at {size} px (seed {seed}) into a temporary folder", flush=True)
    return render_dataset(path, n=n, size=size, seed=seed, progress=False)
