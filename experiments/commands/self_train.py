"""``galaxy10 self-train``: Noisy Student self-training on unlabelled images with a teacher's pseudo-labels."""

from __future__ import annotations

import argparse

from experiments.commands.common import add_data_argument, add_overrides_argument, add_tracking_uri_argument, workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 self-train``."""
    parser = subparsers.add_parser(
        "self-train",
        help="Noisy Student self-training: a teacher pseudo-labels unlabelled images for a student",
        description="The teacher (a registered model; default the newest study champion) gives every image of the "
        "unlabelled pool calibrated probabilities; out-of-distribution and unsure images are left out, "
        "each class keeps its most confident ones; the student (--config, trained with its augmentation "
        "and dropout) learns from the labelled training images plus the pseudo-labelled ones, early-"
        "stopped on the labelled validation split. Rounds repeat with the student as teacher. A pool "
        "that holds validation or test images is refused.",
    )
    parser.add_argument(
        "--unlabeled",
        nargs="+",
        required=True,
        metavar="INPUT",
        help="the pool: HDF5 files, folders of images, CSV/Parquet lists (labels ignored)",
    )
    parser.add_argument(
        "--config", required=True, help="the student's run YAML, e.g. experiments/configs/reference.yaml"
    )
    add_data_argument(parser)
    add_overrides_argument(parser, "the student's run config", "train.epochs=20")
    parser.add_argument(
        "--teacher", help="the teacher model (NAME@alias, run id, models:/...; default: the newest study champion)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="self-training rounds (1-10, default 1)")
    parser.add_argument("--threshold", type=float, default=0.8, help="least calibrated top probability (default 0.8)")
    parser.add_argument("--per-class", type=int, help="most pseudo-labelled images per class (default: no cap)")
    parser.add_argument(
        "--ood",
        choices=("on", "off"),
        default="on",
        help="leave out the pool images the teacher flags out-of-distribution (default on)",
    )
    parser.add_argument("--name", help="registered model name of the student (default self-train-<model.name>)")
    add_tracking_uri_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Self-train and print what each round did."""
    from experiments.catalog.inputs import plan_catalog_inputs
    from experiments.names import check_study_name
    from experiments.pretraining.pool import load_pool
    from experiments.selftrain.pseudo import check_selection
    from experiments.selftrain.run import self_train, summary_lines
    from experiments.settings.run import load_config
    from experiments.training import load_training_data

    cfg = load_config(args.config, args.overrides)
    name = check_study_name(args.name or f"self-train-{cfg.model.name}", "--name")
    check_selection(args.threshold, args.per_class)  # before the data or the pool is read
    if not 1 <= args.rounds <= 10:
        from core.errors import ConfigError

        raise ConfigError(f"--rounds {args.rounds} is out of range; use 1-10")
    inputs = plan_catalog_inputs(args.unlabeled)  # a missing pool input fails before the data is touched
    data = load_training_data(cfg.data, args.data, targets=cfg.augment.targets)
    pool = load_pool(inputs, cfg.data.size)
    results, registered = self_train(
        cfg,
        data,
        pool,
        teacher=args.teacher,
        rounds=args.rounds,
        threshold=args.threshold,
        per_class=args.per_class,
        use_ood=args.ood == "on",
        ws=workspace(args),
        name=name,
    )
    print("\n".join(summary_lines(results, registered, pool)))
    return 0
