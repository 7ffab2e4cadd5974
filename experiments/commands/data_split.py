"""``galaxy10 data split``: make (or reuse) the group-aware stratified train/val/test split of a file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def register(data_sub: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 data split``."""
    parser = data_sub.add_parser(
        "split",
        help="make the train/validation/test split of a data file",
        description="Split a Galaxy10 file into train/validation/test, stratified by class, keeping "
        "duplicate images and same-position entries (within 1 arcsec) in one split. The "
        "split is saved beside the data as <data>.split.json and reused by every later step.",
    )
    parser.add_argument(
        "file",
        nargs="?",
        default=None,
        metavar="FILE",
        help="Galaxy10 HDF5 file (default: data/Galaxy10_DECals.h5 if present, else data/galaxy10_synthetic.h5)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        metavar="F",
        help="fraction of all images held out for testing (default: the saved split's, else 0.1)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="fraction of the non-test images used for validation (default: the saved split's, else 0.1)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the saved split's, else 42)")
    parser.add_argument(
        "--force", action="store_true", help="replace a saved split made with other parameters or for other data"
    )
    parser.set_defaults(func=run)


def format_split_table(class_names: Sequence[str], counts: dict[str, Sequence[int]]) -> str:
    """Per-class image counts of each split, with each class's test share, as aligned text."""
    width = max(len("class"), *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}  {'train':>6}  {'val':>6}  {'test':>6}  {'test %':>6}"]
    for k, name in enumerate(class_names):
        tr, va, te = (int(counts[s][k]) if k < len(counts[s]) else 0 for s in ("train", "val", "test"))
        total = tr + va + te
        share = f"{100 * te / total:5.1f}%" if total else "     -"
        lines.append(f"{name:<{width}}  {tr:>6}  {va:>6}  {te:>6}  {share:>6}")
    tr, va, te = (sum(int(c) for c in counts[s]) for s in ("train", "val", "test"))
    total = tr + va + te
    lines.append(f"{'total':<{width}}  {tr:>6}  {va:>6}  {te:>6}  {100 * te / max(total, 1):5.1f}%")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Make or reuse the split and print its sizes and class counts."""
    from core.paths import resolve_data_path
    from pipelines.reader import validate_galaxy10
    from pipelines.splits import ensure_split, split_path_for

    data_path = resolve_data_path(args.file)
    info = validate_galaxy10(data_path)
    path = split_path_for(data_path)
    before = path.stat().st_mtime_ns if path.exists() else None
    split = ensure_split(
        data_path, test_fraction=args.test_fraction, val_fraction=args.val_fraction, seed=args.seed, force=args.force
    )
    reused = before is not None and path.stat().st_mtime_ns == before
    kind = "SYNTHETIC data" if info.synthetic else "data"
    print(f"{kind}: {data_path} ({info.n_images} images, fingerprint {split.fingerprint[:12]})")
    print(
        f"split: seed {split.seed}, test {split.test_fraction:g} of all, val {split.val_fraction:g} of the "
        f"rest; {split.n_groups} groups, {split.n_multi_groups} of them duplicate groups (> 1 image)"
    )
    print(f"sizes: train {len(split.train)}, val {len(split.val)}, test {len(split.test)}")
    print(format_split_table(info.class_names, dict(split.class_counts)))
    print(f"{'reused existing split' if reused else 'saved split to'} {path}")
    if info.synthetic:
        print("note: this is SYNTHETIC data, not the Galaxy10 DECaLS release")
    return 0
