"""``galaxy10 train``: train one CNN from a run config and log it to MLflow."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from experiments.commands.common import (
    DATA_HELP,
    add_data_argument,
    add_json_argument,
    add_overrides_argument,
    add_tracking_uri_argument,
    workspace,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 train``."""
    parser = subparsers.add_parser(
        "train",
        help="train a CNN from a config YAML and log the run to MLflow",
        description="Train on the train split, early-stop and keep the best weights on the validation "
        "split, evaluate (with test-time augmentation if configured) and log params, tags, "
        "per-epoch metrics, reports and the model to MLflow. The test split is scored only "
        "with --score-test.",
    )
    parser.add_argument(
        "--config",
        required=True,
        metavar="YAML",
        help="run config, e.g. experiments/configs/reference.yaml (holds only what differs from the defaults)",
    )
    add_overrides_argument(parser, "a config value", "train.epochs=3")
    add_data_argument(parser, help=f"overrides data.path; {DATA_HELP}")
    add_tracking_uri_argument(parser)
    parser.add_argument(
        "--score-test",
        action="store_true",
        help="also score the held-out TEST split (do this once, for the final model)",
    )
    parser.add_argument(
        "--no-log-model",
        dest="log_model",
        action="store_false",
        help="do not log the model itself (metrics and reports are still logged)",
    )
    add_json_argument(parser, "the run summary")
    parser.set_defaults(func=run)


def format_summary(summary: dict) -> str:
    """The run summary as a few lines of text."""
    kind = "SYNTHETIC data" if summary.get("synthetic") else f"real data ({summary.get('provenance')})"
    lines = [f"run {summary['run_id']} on {kind}: best epoch {summary['best_epoch']} of {summary['epochs_run']}"]
    for split in ("val", "test"):
        m = summary.get(split)
        if m:
            lines.append(
                f"  {split:<4} accuracy {100 * m['accuracy']:5.1f}%  "
                f"balanced {100 * m['balanced_accuracy']:5.1f}%"
                f"  macro-F1 {100 * m['macro_f1']:5.1f}%  log loss {m['log_loss']:.3f}"
            )
    if summary.get("model_uri"):
        lines.append(f"model: {summary['model_uri']}  (also runs:/{summary['run_id']}/model)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load the config, open an MLflow run, train, print the summary."""
    from experiments.settings.run import load_config
    from experiments.tracking.lookups import training_lookups
    from experiments.tracking.mlflow_tracker import MlflowTracker
    from experiments.training import TrainOptions, load_training_data, prepare_run, summary, train

    cfg = load_config(args.config, args.overrides)
    # Everything that can fail on bad input is checked before the MLflow run is opened: the data, the
    # weights file, the start model (a mismatch leaves no run), the source run's recall.
    data = load_training_data(cfg.data, args.data, targets=cfg.augment.targets)  # targets: the file's classes
    prepared = prepare_run(cfg, data, **training_lookups(workspace(args)))
    # Keras prints its per-epoch progress to stdout; keep stdout for the summary (e.g. --json).
    with (
        contextlib.redirect_stdout(sys.stderr),
        MlflowTracker(
            cfg.experiment_name, cfg.run_name, ws=workspace(args), tags={"config.file": args.config}
        ) as tracker,
    ):
        result = train(prepared, tracker, TrainOptions(score_test=args.score_test, log_model=args.log_model))
    out = summary(result)
    print(json.dumps(out, indent=2) if args.json else format_summary(out))
    return 0
