"""``galaxy10 baseline``: the most-frequent-class floor, scored on the test split."""

from __future__ import annotations

import argparse
import json
from typing import Any

from experiments.commands.common import add_data_argument, add_json_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 baseline``."""
    parser = subparsers.add_parser(
        "baseline",
        help="score the most-frequent-class baseline on the test split",
        description="Fit DummyClassifier(strategy='most_frequent') on the train labels and score it on "
        "the test split (accuracy, balanced accuracy, macro-F1, per-class recall). Uses the "
        "saved split of the data file, making it first if needed.",
    )
    add_data_argument(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="split seed (default: the saved split's, else 42); a saved split made with another "
        "seed is refused, never replaced",
    )
    add_json_argument(parser, "the metrics")
    parser.set_defaults(func=run)


def format_baseline(metrics: dict[str, Any]) -> str:
    """The metrics of :func:`pipelines.baseline.score_baseline` as a short text table."""
    tag = "  SYNTHETIC data" if metrics.get("synthetic") else ""
    lines = [
        f"data: {metrics['data']} (fingerprint {metrics['fingerprint']}){tag}",
        f"baseline: always '{metrics['majority_class_name']}' (most frequent of {metrics['n_train']} train "
        f"labels), scored on {metrics['n_test']} test images",
        f"  {'accuracy':<18} {100 * metrics['accuracy']:5.1f}%",
        f"  {'balanced accuracy':<18} {100 * metrics['balanced_accuracy']:5.1f}%",
        f"  {'macro-F1':<18} {100 * metrics['macro_f1']:5.1f}%",
        "per-class recall:",
    ]
    recall = metrics["per_class_recall"]
    width = max(len(k) for k in recall)
    for key, value in recall.items():
        shown = f"{100 * value:5.1f}%" if value is not None else "    - (no test images)"
        lines.append(f"  {key:<{width}} {shown}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load or make the split, score the baseline, print a table or JSON."""
    from core.paths import resolve_data_path
    from pipelines.baseline import score_baseline
    from pipelines.splits import ensure_split

    data_path = resolve_data_path(args.data)
    split = ensure_split(data_path, test_fraction=None, val_fraction=None, seed=args.seed)
    metrics = score_baseline(data_path, split)
    print(json.dumps(metrics, indent=2) if args.json else format_baseline(metrics))
    return 0
