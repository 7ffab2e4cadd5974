"""``galaxy10 data synth`` (render the synthetic Galaxy10-like set) and ``galaxy10 data gallery``."""

from __future__ import annotations

import argparse
import time

from experiments.commands.common import add_force_argument


def register(data_sub: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 data synth`` and ``galaxy10 data gallery``."""
    synth = data_sub.add_parser(
        "synth",
        help="render the synthetic Galaxy10-like data set with GalSim",
        description="Render a synthetic Galaxy10 DECaLS-like HDF5 file (same schema as the real one, "
        "marked synthetic) with GalSim: ten morphology classes in the real class "
        "proportions, DECaLS-like colours, seeing, sky noise and field sources. The file "
        "depends only on --seed, --n, --size and --difficulty, not on --workers.",
    )
    synth.add_argument(
        "--n", type=int, default=None, metavar="N", help="number of images (default: 4000, the demo set)"
    )
    synth.add_argument("--size", type=int, default=256, metavar="PX", help="image side in pixels (default: 256)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument(
        "--difficulty",
        type=float,
        default=0.5,
        metavar="D",
        help="0..1: overlap of confusable classes and noise level (default: 0.5)",
    )
    synth.add_argument(
        "--workers", type=int, default=None, metavar="W", help="worker processes (default: every CPU core)"
    )
    synth.add_argument(
        "--out", default=None, metavar="FILE", help="output HDF5 file (default: data/galaxy10_synthetic.h5)"
    )
    add_force_argument(synth, "synthetic file")
    synth.set_defaults(func=run_synth)

    gallery = data_sub.add_parser(
        "gallery",
        help="draw a PNG grid of example images per class",
        description="Write a PNG with a few random examples of each class (one row per class) from a "
        "Galaxy10-schema file, real or synthetic.",
    )
    gallery.add_argument(
        "file",
        nargs="?",
        default=None,
        metavar="FILE",
        help="Galaxy10 HDF5 file (default: data/Galaxy10_DECals.h5 if present, else data/galaxy10_synthetic.h5)",
    )
    gallery.add_argument(
        "--out",
        default="gallery.png",
        metavar="FIGURE",
        help="output figure; the suffix picks the format: .png, .jpg, .pdf or .svg (default: gallery.png)",
    )
    gallery.add_argument("--per-class", type=int, default=6, metavar="K", help="examples per class (default: 6)")
    gallery.add_argument("--seed", type=int, default=0, help="which examples are drawn (default: 0)")
    gallery.add_argument("--thumb", type=int, default=128, metavar="PX", help="thumbnail side in pixels (default: 128)")
    add_force_argument(gallery, "gallery")
    gallery.set_defaults(func=run_gallery)


def run_synth(args: argparse.Namespace) -> int:
    """Render the file and print where it went and how fast."""
    from core.paths import synthetic_data_path
    from synth.generator import DEFAULT_N, render_dataset

    n = DEFAULT_N if args.n is None else args.n
    out = args.out or synthetic_data_path()
    start = time.perf_counter()
    path = render_dataset(
        out, n=n, size=args.size, seed=args.seed, difficulty=args.difficulty, workers=args.workers, force=args.force
    )
    elapsed = time.perf_counter() - start
    size_mb = path.stat().st_size / 2**20
    print(
        f"wrote SYNTHETIC data {path}: {n} images of {args.size} px, seed {args.seed}, difficulty "
        f"{args.difficulty:g} ({size_mb:.1f} MiB, {elapsed:.1f} s, {n / elapsed:.1f} images/s)"
    )
    return 0


def run_gallery(args: argparse.Namespace) -> int:
    """Write the gallery PNG."""
    from core.paths import resolve_data_path
    from pipelines.gallery import make_gallery

    path = make_gallery(
        resolve_data_path(args.file),
        args.out,
        per_class=args.per_class,
        seed=args.seed,
        thumb=args.thumb,
        force=args.force,
    )
    print(f"wrote gallery {path}")
    return 0
