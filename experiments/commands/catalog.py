"""``galaxy10 catalog INPUT... --out FILE.parquet``: a morphology catalog of any number of images."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from experiments.commands.common import add_force_argument, workspace
from experiments.commands.predict import add_model_arguments

#: Largest --chunk-size / --batch-size / --workers (bounded memory: a chunk's pixels are held at once).
MAX_CHUNK = 65536
MAX_BATCH = 4096
MAX_WORKERS = 256
MAX_FLAGGED = 10000

EPILOG = """\
Inputs, in the order given: Galaxy10-schema or imported HDF5 files (every row; ra/dec when the file has
them), folders of PNG/JPEG images (recursive: a folder's files in name order, then
its subfolders), CSV or Parquet lists with a 'path' column
(relative paths are relative to the list) and optional id, ra, dec columns, or single images.

The output is a Parquet file with one row per image: row, id, source, source_index, ra, dec, predicted,
predicted_index, p_<class> per class of the model, max_probability, entropy, view_disagreement (mutual
information across the model's 8 test-time views; empty without TTA), n_views, ood_score and ood_flag
(distance of the CNN embedding to the training galaxies; flagged above the validation split's 99th
percentile) and error (an unreadable
image is a row with its error, never a failed job). The model URI, version, class names and the inputs'
fingerprint are in the file's metadata.

Killed at any point, the same command resumes where it stopped (finished parts are kept in a hidden
.<name>.parts folder beside --out) and the catalog holds every image exactly once.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 catalog``."""
    parser = subparsers.add_parser(
        "catalog",
        help="predict a whole survey into a Parquet catalog (chunked, resumable)",
        description="Run a model over HDF5 files, folders of images or lists of image paths and write a "
        "Parquet catalog: probabilities per class, uncertainty, errors per image.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="HDF5 file, folder of images, CSV/Parquet list of image paths, or an image",
    )
    parser.add_argument("--out", required=True, metavar="FILE.parquet", help="the catalog to write")
    add_model_arguments(parser)
    parser.add_argument(
        "--chunk-size", type=int, default=1024, metavar="N", help="rows per resumable part (default: 1024)"
    )
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per model call (default: 64)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="threads decoding images while the model predicts (default: the CPU count, max 8)",
    )
    parser.add_argument(
        "--ood",
        choices=("auto", "on", "off"),
        default="auto",
        help="out-of-distribution scores and flags, calibrated on the model's validation split so "
        "about 1%% of in-distribution images are flagged: on, off, or auto (on when the "
        "model is a CNN or a galaxy10 ensemble and its training file is here; default)",
    )
    parser.add_argument(
        "--ood-data",
        default=None,
        metavar="FILE.h5",
        help="the file the model was trained on, where its run's data.path is not on this machine",
    )
    parser.add_argument(
        "--flag-uncertain",
        type=int,
        default=None,
        metavar="N",
        help="also write the N most uncertain and up to N out-of-distribution galaxies to a gallery "
        "(index.html, PNGs) in the folder --inspect-out, for a person to look at",
    )
    parser.add_argument(
        "--inspect-out",
        default=None,
        metavar="FOLDER",
        help="the gallery folder of --flag-uncertain (default: <out without .parquet>-inspect)",
    )
    parser.add_argument(
        "--engine",
        choices=("native", "spark"),
        default="native",
        help="native (this machine, resumable; default) or spark (the same job as a Spark job, the "
        "model applied by mlflow.pyfunc.spark_udf; needs pyspark and Java 17)",
    )
    parser.add_argument(
        "--spark-master",
        default="local[*]",
        metavar="URL",
        help="Spark master for --engine spark: local[*] (default) or a cluster's master URL",
    )
    parser.add_argument(
        "--spark-partitions",
        type=int,
        default=None,
        metavar="N",
        help="partitions of the row table for --engine spark (default: Spark's)",
    )
    parser.add_argument(
        "--with-embedding",
        action="store_true",
        help="add each image's CNN embedding (a list of floats) to the catalog, for similarity search or clustering",
    )
    parser.add_argument(
        "--fits",
        action="store_true",
        help="also write the catalog as a FITS binary table beside --out (<out>.fits; held in memory while written)",
    )
    parser.add_argument(
        "--restart", action="store_true", help="discard an unfinished job's parts for this --out instead of resuming it"
    )
    add_force_argument(parser, "catalog")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the inputs and the output, load the model, run the job, print a summary line."""
    import logging

    from core.errors import ConfigError
    from core.outputs import check_output_dir, check_output_file
    from experiments.catalog.inputs import plan_catalog_inputs
    from experiments.catalog.job import run_catalog
    from experiments.serving.predictor import load_predictor

    limits = (
        ("--chunk-size", args.chunk_size, MAX_CHUNK),
        ("--batch-size", args.batch_size, MAX_BATCH),
        ("--workers", args.workers, MAX_WORKERS),
        ("--flag-uncertain", args.flag_uncertain, MAX_FLAGGED),
        ("--spark-partitions", args.spark_partitions, MAX_CHUNK),
    )
    for name, value, high in limits:
        if value is not None and not 1 <= value <= high:
            raise ConfigError(f"{name} {value} is out of range; use 1-{high}")
    if not str(args.out).lower().endswith((".parquet", ".pq")):
        raise ConfigError(f"--out {args.out} must end in .parquet (the catalog is a Parquet file)")
    out = check_output_file(args.out, force=args.force)
    fits_out = check_output_file(out.with_suffix(".fits"), option="--fits", force=args.force) if args.fits else None
    inspect_out = None
    if args.flag_uncertain is not None:
        inspect_out = args.inspect_out or str(out.with_suffix("")) + "-inspect"
        check_output_dir(inspect_out, what="inspection gallery", option="--inspect-out", force=args.force)
    elif args.inspect_out is not None:
        raise ConfigError("--inspect-out names the gallery of --flag-uncertain N; add --flag-uncertain or drop it")
    inputs = plan_catalog_inputs(args.inputs)  # fails on a bad input before a model is loaded
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.engine == "spark":
        if args.restart or args.workers is not None:
            raise ConfigError(
                "--restart and --workers belong to --engine native; Spark reruns a failed job and sets "
                "its own parallelism (--spark-partitions)"
            )
    elif args.spark_partitions is not None or args.spark_master != "local[*]":
        raise ConfigError("--spark-master and --spark-partitions belong to --engine spark; add --engine spark")
    if args.ood_data is not None and args.ood == "off":
        raise ConfigError(
            "--ood-data names the training file for out-of-distribution scores, but --ood is off; drop one of them"
        )
    predictor = load_predictor(args.model, ws=workspace(args))
    if args.engine == "spark":
        from experiments.catalog.spark import run_catalog_spark

        result = run_catalog_spark(
            inputs,
            predictor,
            out,
            master=args.spark_master,
            partitions=args.spark_partitions,
            ood=_ood_factory(args, predictor),
            with_embedding=args.with_embedding,
        )
    else:
        ood = _ood_factory(args, predictor)
        workers = args.workers or min(8, os.cpu_count() or 1)
        result = run_catalog(
            inputs,
            predictor,
            out,
            chunk_size=args.chunk_size,
            workers=workers,
            batch_size=args.batch_size,
            restart=args.restart,
            ood=ood,
            with_embedding=args.with_embedding,
        )
    if fits_out is not None:
        from experiments.catalog.fits import write_fits

        write_fits(out, fits_out)
        print(f"{fits_out}: the same catalog as a FITS binary table")
    if inspect_out is not None:
        from experiments.catalog.inspect import write_inspection

        write_inspection(
            out,
            predictor.card.class_names,
            inspect_out,
            args.flag_uncertain,
            force=args.force,
            title=f"Inspect these: {out.name} ({predictor.card.display_name})",
        )
        print(
            f"{inspect_out}/index.html: the {args.flag_uncertain} most uncertain and the out-of-distribution galaxies"
        )
    synthetic = " (model trained on SYNTHETIC data)" if predictor.card.synthetic else ""
    logging.getLogger("galaxy10").info(
        "catalog of %d images -> %s (%d unreadable, %.1f images/s)%s",
        result.n_rows,
        result.out,
        result.n_errors,
        result.images_per_second,
        synthetic,
    )
    print(
        f"{result.out}: {result.n_rows} rows, {result.n_errors} errors, {_flagged(result.out)}, model "
        f"{predictor.card.display_name}{synthetic}"
    )
    return 0


def _flagged(out: Path) -> str:
    """``N flagged out-of-distribution`` from the written catalog, or ``no out-of-distribution scores``."""
    import pyarrow.parquet as pq

    flags = pq.read_table(out, columns=["ood_flag"]).column("ood_flag")
    if flags.null_count == len(flags):
        return "no out-of-distribution scores"
    return f"{int(flags.fill_null(False).to_numpy().sum())} flagged out-of-distribution"


def _ood_factory(args: argparse.Namespace, predictor):  # noqa: ANN001, ANN202 - Predictor -> callable or None
    """What fits the out-of-distribution detector (called only if the job has none yet), or None when off.

    ``auto`` turns it off, saying why in one warning line, where it cannot be had (an ensemble without
    embeddings, or the training file not on this machine); ``on`` makes that an error.
    """
    import logging

    from core.errors import DataError
    from experiments.catalog.ood import detector_from_file
    from experiments.catalog.training_data import training_rows

    if args.ood == "off":
        return None
    try:
        if not predictor.can_embed:
            raise DataError(
                f"model {predictor.card.uri} is a {predictor.card.kind} model without embeddings, so "
                "it gives no out-of-distribution scores; use a CNN, or --ood off"
            )
        rows = training_rows(predictor.card, args.ood_data, ws=workspace(args))
    except DataError as err:
        if args.ood == "on":
            raise
        logging.getLogger("galaxy10").warning("no out-of-distribution scores (--ood auto): %s", err)
        return None
    return lambda: detector_from_file(predictor.embed, rows.path, rows.train, rows.val, batch=args.batch_size)
