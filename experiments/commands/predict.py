"""``galaxy10 predict IMAGE...``: classify PNG/JPEG images or Galaxy10 HDF5 files with a logged model."""

from __future__ import annotations

import argparse
import logging
import os

from experiments.commands.common import add_tracking_uri_argument, workspace

log = logging.getLogger(__name__)

MODEL_HELP = (
    "NAME@alias (registered model alias), a run id, runs:/<run_id>/model or models:/...; "
    "default: the 'champion' alias of the most recent study"
)


#: Largest --top (no class set is larger: the importer accepts at most a few hundred classes).
MAX_TOP = 1000


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--tracking-uri`` and ``--uncalibrated``, shared with ``galaxy10 serve``."""
    parser.add_argument("--model", default=None, metavar="REF", help=MODEL_HELP)
    add_tracking_uri_argument(parser)
    parser.add_argument(
        "--uncalibrated",
        action="store_true",
        help="the model's own softmax probabilities; default: calibrated with the temperature "
        "fitted on its validation split, as in `galaxy10 catalog` (the top class is the same)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 predict``."""
    parser = subparsers.add_parser(
        "predict",
        help="classify images with a trained model",
        description="Print the most probable Galaxy10 classes of PNG/JPEG images or of the images "
        "in Galaxy10 HDF5 files (FILE.h5 for all, FILE.h5:0-9,20 for some).",
    )
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="PNG/JPEG file, Galaxy10 HDF5 file, or FILE.h5:RANGES"
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        dest="output_format",
        help="output format (default: table)",
    )
    parser.add_argument(
        "--top", type=int, default=3, metavar="K", help="how many classes to print per image (default: 3)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check every input, load the model, predict in batches, print."""
    import numpy as np
    from tqdm.auto import tqdm

    from core.errors import DataError
    from experiments.serving.inputs import iter_input_batches, plan_inputs
    from experiments.serving.predictor import FILE_BATCH, load_predictor
    from experiments.serving.results import format_predictions

    if not 1 <= args.top <= MAX_TOP:
        raise DataError(f"--top {args.top} is out of range; use 1-{MAX_TOP} (larger values print every class)")
    sources = plan_inputs(args.images)  # fails on a bad input before a model is loaded
    total = sum(len(s) for s in sources)
    if total == 0:
        raise DataError("the inputs hold no images; give PNG/JPEG files or a non-empty HDF5 file")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the output clean
    predictor = load_predictor(args.model, ws=workspace(args))
    labels: list[str] = []
    probs: list[np.ndarray] = []
    with tqdm(total=total, desc="predict", unit="img", disable=None, leave=False) as bar:
        for batch in iter_input_batches(sources, batch_size=FILE_BATCH):
            batch_probs = predictor.predict([item.image for item in batch])
            probs.append(batch_probs if args.uncalibrated else predictor.calibrate(batch_probs))
            labels.extend(item.label for item in batch)
            bar.update(len(batch))
    log.info(
        "probabilities %s",
        "uncalibrated (--uncalibrated)"
        if args.uncalibrated
        else f"calibrated with temperature {predictor.card.temperature:.3g} (--uncalibrated for the model's own)",
    )
    top = min(args.top, len(predictor.card.class_names))
    print(
        format_predictions(labels, np.concatenate(probs), predictor.card.class_names, top=top, fmt=args.output_format)
    )
    return 0
