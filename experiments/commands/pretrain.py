"""``galaxy10 pretrain``: self-supervised (VICReg) pretraining of a backbone on unlabelled images."""

from __future__ import annotations

import argparse

from experiments.commands.common import add_overrides_argument, add_tracking_uri_argument, workspace

DEFAULT_CONFIG = "experiments/configs/pretrain.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 pretrain``."""
    parser = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining (VICReg) of a backbone on unlabelled images",
        description="Train the encoder of --config's model (backbone + embedding layer) with VICReg on two random "
        "galaxy views of every unlabelled image (D4 orientation, shift and zoom, per-band flux, "
        "PSF-like blur, noise). Inputs are what `galaxy10 catalog` takes (HDF5 files, folders, "
        "CSV/Parquet lists); labels in them are ignored. One MLflow run with the loss curve and, with "
        "--monitor, the k-NN accuracy of the embedding; the model is logged and registered, ready for "
        "model.init_from. Checkpoints after every epoch: the same command continues a killed run.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="HDF5 files, folders of images, CSV/Parquet lists")
    parser.add_argument(
        "--config", default=None, help=f"run YAML with the model and input size (default: the shipped {DEFAULT_CONFIG})"
    )
    add_overrides_argument(parser, "the run config", "model.name=reference_cnn")
    parser.add_argument("--epochs", type=int, default=30, help="epochs over the pool (default 30)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument(
        "--budget", metavar="DURATION", help="wall-clock budget (e.g. 20m): no epoch starts that would end after it"
    )
    parser.add_argument(
        "--monitor",
        metavar="FILE",
        help="a labelled Galaxy10-schema file: k-NN accuracy of the "
        "embedding on its validation split, before and during",
    )
    parser.add_argument("--checkpoint-dir", help="where checkpoints go (default: the cache folder's pretrain/)")
    parser.add_argument("--name", help="registered model name (default pretrain-<model.name>), alias 'pretrained'")
    add_tracking_uri_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Pretrain, log, register; print the k-NN accuracy before and after."""
    from pathlib import Path

    from experiments.pretraining.command import run_pretrain

    config = Path(args.config) if args.config else Path(__file__).resolve().parents[1] / "configs" / "pretrain.yaml"
    result = run_pretrain(
        args.inputs,
        config=config,
        overrides=tuple(args.overrides),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        budget=args.budget,
        monitor=args.monitor,
        checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
        name=args.name,
        ws=workspace(args),
    )
    print(result)
    return 0
