"""What every benchmark script shares: quick defaults, ``--full`` and a small synthetic default bed.

Each ``bench_*.py`` runs with defaults that finish in a few minutes on 2 CPU cores (``make bench`` runs
them all). ``--full`` switches to the settings ``docs/BENCHMARKS.md`` quotes; options given explicitly
on the command line win over both.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
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
    """Parse; with ``--full``, every option not given on the command line takes its full value (one given
    explicitly keeps it, even when it equals the quick default: ``--full --repeats 1`` runs one repetition)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if getattr(args, "full", False):
        given = {
            action.dest
            for action in parser._actions
            for opt in action.option_strings
            if any(a == opt or a.startswith(opt + "=") for a in argv)
        }
        for dest, value in args._full_settings.items():
            if dest not in given:
                setattr(args, dest, value)
    return args


def synthetic_bed(folder: Path, *, n: int = 600, size: int = 128, seed: int = 0) -> Path:
    """Render a small SYNTHETIC Galaxy10-like file into ``folder`` (the default bed without ``--data``)."""
    from synth.generator import render_dataset

    path = folder / f"synthetic-{n}-{size}px-seed{seed}.h5"
    print(f"data: rendering {n} SYNTHETIC images at {size} px (seed {seed}) into a temporary folder", flush=True)
    return render_dataset(path, n=n, size=size, seed=seed, progress=False)


def cli_env(work: Path) -> dict[str, str]:
    """The environment of a benchmark's ``galaxy10`` commands: cache and MLflow store inside ``work``."""
    return {
        **os.environ,
        "GALAXY10_CACHE": str(work / "cache"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def galaxy10(*args: str, cwd: Path, env: dict[str, str], quiet: bool = True) -> str:
    """Run one ``galaxy10`` command in ``cwd``; its stdout, or SystemExit with its last lines on failure."""
    cmd = [sys.executable, "-m", "experiments.cli", *(["-q"] if quiet else []), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{Path(sys.argv[0]).stem}: `galaxy10 {' '.join(args)}` failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def make_bed(name: str, work: Path, env: dict[str, str], *, synthetic_n: int = 600, size: int = 128) -> Path:
    """A test bed's HDF5 file in ``work`` (kept if already there): ``gz2`` (the real GZ2 set), ``rings`` (the real
    DECaLS rings made rare: 30 rings vs 235 others), ``rings_all`` or ``synthetic`` (SYNTHETIC)."""
    out = work / f"{name}.h5"
    if out.is_file():
        return out
    px = str(size)
    if name == "gz2":
        src = REALSAMPLES / "gz2_hart16_sdss"
        galaxy10(
            "data",
            "import",
            str(src),
            "--labels",
            str(src / "labels.csv"),
            "--size",
            px,
            "--out",
            str(out),
            cwd=work,
            env=env,
        )
    elif name == "rings":
        src = REALSAMPLES / "gz_decals_zoobot_rings"
        with (src / "catalog.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        rings = [r for r in rows if r["ring"] == "1"][:30]
        others = [r for r in rows if r["ring"] == "0"]
        labels = work / "rare_rings.csv"
        labels.write_text(
            "file,label\n"
            + "".join(f"{r['file']},{'ring' if r['ring'] == '1' else 'not_ring'}\n" for r in rings + others)
        )
        galaxy10(
            "data", "import", str(src), "--labels", str(labels), "--size", px, "--out", str(out), cwd=work, env=env
        )
    elif name == "rings_all":
        src = REALSAMPLES / "gz_decals_zoobot_rings"
        galaxy10(
            "data",
            "import",
            str(src),
            "--labels",
            str(src / "catalog.csv"),
            "--label-column",
            "ring",
            "--class-names",
            "not_ring,ring",
            "--size",
            px,
            "--out",
            str(out),
            cwd=work,
            env=env,
        )
    elif name == "synthetic":
        galaxy10(
            "data", "synth", "--n", str(synthetic_n), "--size", px, "--seed", "0", "--out", str(out), cwd=work, env=env
        )
    else:
        raise SystemExit(f"{Path(sys.argv[0]).stem}: unknown test bed {name!r}; use gz2, rings, rings_all or synthetic")
    return out
