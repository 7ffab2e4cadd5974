"""``galaxy10 evaluate``: repeated cross-validation of two or more recipes on one labelled file."""

from __future__ import annotations

import argparse

from experiments.commands.common import (
    add_data_argument,
    add_force_argument,
    add_json_argument,
    add_tracking_uri_argument,
    workspace,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 evaluate``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="repeated cross-validation of recipes on one labelled file, with paired verdicts",
        description="Score every recipe on R x K stratified folds of the whole file (every image held out once per "
        "repetition; duplicate groups kept on one side) and report each recipe's mean and its paired "
        "difference from the first recipe with a Nadeau-Bengio corrected resampled t interval, overall "
        "and per class: a table, a plot and JSON. One MLflow parent run with a child per recipe and "
        "fold keeps the per-image predictions; the same command continues an evaluation that was killed.",
    )
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="[NAME=]YAML",
        required=True,
        help="a run config (trained on each fold) or a tuning config (the catalog path: tune, "
        "ensemble, the champion predicts; needs --budget); repeat, the first is the baseline",
    )
    add_data_argument(parser)
    parser.add_argument("--repeats", type=int, default=3, help="repetitions R (1-20, default 3)")
    parser.add_argument("--folds", type=int, default=5, help="folds K per repetition (2-20, default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds (repetition r uses seed + r)")
    parser.add_argument(
        "--budget",
        metavar="BUDGET",
        help="a tuning recipe's budget per fold: a duration (20m) or a factor of the first run "
        "recipe's median wall time per fold so far, this fold's included (4x)",
    )
    parser.add_argument(
        "--label-fraction",
        type=float,
        default=1.0,
        help="learn from this stratified share of each fold's training labels (0-1, default 1); "
        "every held-out image is still scored: a label-efficiency evaluation",
    )
    parser.add_argument("--out", default=None, help="folder for evaluation.md/.json/.png (default: reports/evaluate)")
    parser.add_argument("--experiment", default="galaxy10-evaluate", help="MLflow experiment of the evaluation runs")
    add_tracking_uri_argument(parser)
    add_force_argument(parser, "evaluation")
    add_json_argument(parser, "the summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run (or continue) the evaluation and print its tables."""
    import json

    from core.paths import resolve_data_path
    from experiments.crossval.folds import parse_budget, parse_recipe
    from experiments.crossval.run import run_evaluation
    from experiments.crossval.summary import summary_markdown
    from experiments.names import check_label

    recipes = [parse_recipe(spec) for spec in args.recipe]
    budget = parse_budget(args.budget)
    experiment = check_label(args.experiment, "--experiment")
    out = args.out or "reports/evaluate"
    data = resolve_data_path(args.data)
    result = run_evaluation(
        data,
        recipes,
        out=out,
        repeats=args.repeats,
        folds=args.folds,
        seed=args.seed,
        budget=budget,
        ws=workspace(args),
        experiment=experiment,
        force=args.force,
        label_fraction=args.label_fraction,
    )
    if args.json:
        print(
            json.dumps(
                {"parent_run_id": result.parent_run_id, "out": str(result.out), **result.summary.as_dict()}, indent=2
            )
        )
        return 0
    print(summary_markdown(result.summary, synthetic=result.synthetic, data_path=str(data)))
    print(
        f"evaluation {result.key}: {result.ran} fold fit(s) run, {result.reused} reused from an earlier run of "
        f"this command ({result.seconds:.0f} s); written to {result.out}/ (evaluation.md, .json, .png); MLflow "
        f"parent run {result.parent_run_id}"
    )
    return 0
