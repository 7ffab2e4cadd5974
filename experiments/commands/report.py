"""``galaxy10 report``: score a study's best models on the test split and write an HTML/Markdown report."""

from __future__ import annotations

import argparse

from experiments.commands.common import (
    add_data_argument,
    add_storage_argument,
    add_study_argument,
    add_tracking_uri_argument,
    workspace,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 report``."""
    parser = subparsers.add_parser(
        "report",
        help="best-model report of a study: data card, test scores with 95%% CIs, figures",
        description="Score the most-frequent-class baseline, the study's best CNN and the ensemble comparison's "
        "winner (if `galaxy10 ensemble` was run) ONCE on the test split, log those numbers to MLflow "
        "and write report.html (self-contained), report.md and the PNGs into --out; the files are "
        "also logged under report/ on the study's MLflow parent run.",
    )
    add_study_argument(parser)
    parser.add_argument(
        "--out",
        help="output folder (default: reports/<study>): new, empty or a previous report, "
        "which is replaced atomically; other folders are refused unless --force",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write the report into a folder holding other files (they are kept, never deleted)",
    )
    add_storage_argument(parser)
    add_tracking_uri_argument(parser)
    add_data_argument(parser, study=True)
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the 95%% confidence intervals (default 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="REF",
        dest="models",
        help="also score this model (NAME@alias, run id, models:/...), e.g. a student of `galaxy10 "
        "self-train`, with paired verdicts against the study's models; repeatable (at most 8). "
        "A self-trained model's unlabelled pool is named and checked to hold no test image",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the report and print where it is and the headline numbers."""
    from pathlib import Path

    from experiments.names import check_study_name
    from experiments.reporting.bootstrap import check_resamples
    from experiments.reporting.build import build_report

    study = check_study_name(args.study)
    check_resamples(args.bootstrap)
    out = Path(args.out) if args.out else Path("reports") / study
    report = build_report(
        study,
        out=out,
        ws=workspace(args),
        data_path=args.data,
        n_resamples=args.bootstrap,
        seed=args.seed,
        force=args.force,
        extra_models=args.models,
    )
    if report.data.synthetic:
        print("SYNTHETIC data: these numbers say nothing about real galaxies")
    print(
        f"report: {out / 'report.html'} (also report.md and PNGs; logged under report/ on run {report.parent_run_id})"
    )
    for m in report.models:
        lo, hi = m.ci["accuracy"]
        print(
            f"  {m.label:<32} test accuracy {100 * m.metrics['accuracy']:5.1f}% "
            f"[{100 * lo:.1f}, {100 * hi:.1f}]  macro-F1 {100 * m.metrics['macro_f1']:5.1f}%"
        )
    if not report.ensemble.found:
        print(f"  {report.ensemble.reason}")
    print(f"  test numbers logged to MLflow run {report.scoring_run_id} ({report.tracking_uri})")
    return 0
