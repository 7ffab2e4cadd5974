"""Self-supervised pretraining: its throughput, and whether it buys label efficiency (judged by ``galaxy10 evaluate``).

1. ``galaxy10 pretrain`` (VICReg) of the catalog study's start point (``experiments/configs/pretrain.yaml``: the
   orientation-pooled D4 CNN, 64 -> 48 px) on an unlabelled pool - by default the 1,980 unlabelled SDSS
   cutouts of ``../shared/data/unlabeled/gz2_sdss_1980`` (near-duplicates of the labelled beds removed), with
   the k-NN monitor on the GZ2 bed: images/s, wall time, the loss and the k-NN accuracy before and after.
2. ``galaxy10 evaluate`` on the GZ2 bed (928 labelled SDSS galaxies, 6 classes) at each ``--fractions`` share
   of each fold's training labels: the same D4 recipe from scratch (the baseline) against it fine-tuned from
   the pretrained model (``model.init_from``). Paired differences with corrected intervals per fraction.

    python benchmarks/bench_pretrain.py                       # quick: synthetic pool and bed, 2 epochs, 1 x 3
    python benchmarks/bench_pretrain.py --full --work /tmp/pre   # the real pool and GZ2 bed, 1 x 5 folds
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from common import ROOT, add_full_flag, cli_env, galaxy10, make_bed, parse_with_full

UNLABELED = ROOT.parent / "shared" / "data" / "unlabeled" / "gz2_sdss_1980" / "images"
#: The fine-tuning recipe: the catalog study's start point as a run config (tune_catalog.yaml's first point).
D4_RECIPE = {
    "experiment_name": "bench-pretrain",
    "data": {"size": 64, "crop": 48},
    "augment": {"policy": "galaxy", "tta": True},
    "model": {"name": "d4_cnn", "params": {"filters": [4, 8, 16, 16], "group_pool": "max"}, "dropout": 0.5},
    "train": {"epochs": 40, "patience": 10, "monitor": "val_loss", "precision": "auto", "learning_rate": 1.0e-3},
}


def epoch_seconds(tracking_uri: str, run_id: str) -> np.ndarray:
    """The pretraining run's per-epoch training seconds (its ``epoch_seconds`` metric)."""
    from mlflow import MlflowClient

    return np.asarray([m.value for m in MlflowClient(tracking_uri).get_metric_history(run_id, "epoch_seconds")])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", help="unlabelled inputs (default: a synthetic file; --full: the SDSS pool)")
    parser.add_argument("--bed", default="synthetic", help="gz2 or synthetic")
    parser.add_argument("--epochs", type=int, default=2, help="pretraining epochs")
    parser.add_argument("--fractions", default="0.25,1.0", help="shares of the training labels, comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=2,
        help="epochs of both recipes (0: the recipe's own 40, with early stopping)",
    )
    parser.add_argument("--work", help="keep the stores here (resumable); default: a temporary folder")
    add_full_flag(parser, {"bed": "gz2", "epochs": 30, "fractions": "0.1,0.25,1.0", "folds": 5, "fine_tune_epochs": 0})
    args = parse_with_full(parser)
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = cli_env(work)
        bed = make_bed(args.bed, work, env, synthetic_n=300)
        pool = args.pool or (str(UNLABELED) if args.bed == "gz2" else None)
        if pool is None:
            pool = str(work / "pool.h5")
            if not Path(pool).is_file():
                galaxy10(
                    "data", "synth", "--n", "400", "--size", "128", "--seed", "7", "--out", pool, cwd=work, env=env
                )
        recipe = {**D4_RECIPE}
        if args.fine_tune_epochs:
            recipe["train"] = {**recipe["train"], "epochs": args.fine_tune_epochs}
        started = time.perf_counter()
        out = galaxy10(
            "pretrain",
            pool,
            "--epochs",
            str(args.epochs),
            "--monitor",
            str(bed),
            "--name",
            "bench-pretrained",
            "--checkpoint-dir",
            str(work / "checkpoints"),
            cwd=work,
            env=env,
        )
        seconds = time.perf_counter() - started
        print(out, flush=True)
        n_pool = int(re.search(r"on ([\d,]+) (?:SYNTHETIC )?unlabelled", out)[1].replace(",", ""))
        epochs_run = int(re.search(r": (\d+) epoch\(s\)", out)[1])
        epoch_s = epoch_seconds(env["MLFLOW_TRACKING_URI"], re.search(r"MLflow run (\w+)", out)[1])
        print(
            f"pretraining: {epochs_run} epochs over {n_pool:,} images, {seconds:.0f} s of command wall time "
            f"(pool decoding and the k-NN monitor included); a training epoch {np.median(epoch_s):.1f} s "
            f"(median): {n_pool / np.median(epoch_s):.1f} images/s, two views each\n",
            flush=True,
        )
        scratch, tuned = work / "scratch.yaml", work / "pretrained.yaml"
        scratch.write_text(yaml.safe_dump(recipe, sort_keys=False))
        tuned.write_text(
            yaml.safe_dump(
                {**recipe, "model": {**recipe["model"], "init_from": "bench-pretrained@pretrained"}}, sort_keys=False
            )
        )
        for fraction in (float(f) for f in args.fractions.split(",")):
            out = galaxy10(
                "evaluate",
                "--data",
                str(bed),
                "--recipe",
                f"scratch={scratch}",
                "--recipe",
                f"pretrained={tuned}",
                "--repeats",
                str(args.repeats),
                "--folds",
                str(args.folds),
                "--label-fraction",
                f"{fraction:g}",
                "--out",
                str(work / f"eval-{fraction:g}"),
                cwd=work,
                env=env,
            )
            print(f"== {fraction:.0%} of the training labels\n{out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
