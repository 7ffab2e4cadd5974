"""Backbones at an equal epoch budget on one split: accuracy, balanced accuracy, weakest-class recall,
train and predict images/s, parameters, multiply-adds per image, ratios to the reference CNN (validation
split only).

Data: ``--data FILE`` (any Galaxy10-schema file), ``--gz2`` to import the real Galaxy Zoo 2 test bed
from ``../shared/data/realsamples/gz2_hart16_sdss`` (928 SDSS galaxies, 6 classes, spiral the rarest),
or by default a small SYNTHETIC set rendered for the run. Everything is written to a temporary folder
(cache, split); nothing is logged to MLflow (``--tracking-uri URI`` logs every run there instead).

    python benchmarks/bench_backbones.py                       # quick: synthetic 600, 3 backbones, 2 epochs
    python benchmarks/bench_backbones.py --gz2 --full          # every backbone, 2 seeds, 10 epochs, 64 -> 48 px
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
from common import REALSAMPLES, add_full_flag, parse_with_full, synthetic_bed

#: Each backbone at a size that trains in minutes on 2 CPU cores (the reference: the platform's recipe).
BACKBONES: dict[str, list[str]] = {
    "reference_cnn": [],
    "resnet": ["model.name=resnet", "model.params={depth: 10, width: 8, stochastic_depth: 0.1}"],
    # 4-16 channels per group slice: 32-64-128-128 channels in all, about 2.5x the reference's multiply-adds;
    # the D4 entries below pin group_pool: mean (the design measured first); d4_cnn_gmax is today's default
    "d4_cnn": ["model.name=d4_cnn", "model.params={filters: [4, 8, 16, 16], group_pool: mean}"],
    # 4-4-8-8 per slice: 32-32-64-64 channels, the reference CNN's widths, so the same multiply-adds per image
    "d4_cnn_small": ["model.name=d4_cnn", "model.params={filters: [4, 4, 8, 8], group_pool: mean}"],
    # ... without batch norm, like the reference CNN (batch norm is most of the D4 CNN's extra time on a CPU)
    "d4_cnn_small_nobn": [
        "model.name=d4_cnn",
        "model.params={filters: [4, 4, 8, 8], batch_norm: false, group_pool: mean}",
    ],
    # the same D4 CNN with the global mean as its invariant pooling (the design before radial pooling)
    "d4_cnn_mean": ["model.name=d4_cnn", "model.params={filters: [4, 8, 16, 16], pool: mean, group_pool: mean}"],
    # radial pooling with each ring's maximum as well (sees light covering part of a ring: elongated galaxies)
    "d4_cnn_max": [
        "model.name=d4_cnn",
        "model.params={filters: [4, 8, 16, 16], ring_stats: [mean, max], group_pool: mean}",
    ],
    # orientation pooling: the maximum over the 8 orientations before the ring means (keeps anisotropy)
    "d4_cnn_gmax": ["model.name=d4_cnn", "model.params={filters: [4, 8, 16, 16], group_pool: max}"],
    "efficientnetv2": ["model.name=efficientnetv2", "model.params={variant: B0}"],
    "convnext": ["model.name=convnext", "model.params={variant: Tiny}"],
}
#: Backbones run with several seeds (the others once).
SEEDED = ("reference_cnn", "d4_cnn", "d4_cnn_small", "d4_cnn_small_nobn", "d4_cnn_mean", "d4_cnn_max", "d4_cnn_gmax")


def import_gz2(folder: Path) -> Path:
    """Import the real GZ2 test bed (its ``labels.csv``) into ``folder/gz2.h5``."""
    from pipelines.importer import import_folder

    src = REALSAMPLES / "gz2_hart16_sdss"
    if not src.is_dir():
        raise SystemExit(f"bench_backbones: {src} not found; pass --data FILE instead of --gz2")
    out = folder / "gz2.h5"
    import_folder(src, src / "labels.csv", out, size=128, progress=False)
    return out


def run_one(name: str, seed: int, data, args, tracker_factory) -> dict:  # noqa: ANN001
    from experiments.settings.run import load_config
    from experiments.training import TrainOptions, predict_probs, prepare_run, train
    from models.cost import multiply_adds

    sets = [
        f"data.size={args.size}",
        f"data.crop={args.crop}",
        f"train.epochs={args.epochs}",
        "train.patience=null",
        "train.monitor=val_loss",
        f"train.seed={seed}",
        f"augment.policy={args.policy}",
        "augment.targets=null",
        f"train.precision={args.precision}",
        *BACKBONES[name],
    ]
    cfg = load_config(None, sets)
    with tracker_factory(f"bench-{name}-seed{seed}") as tracker:
        start = time.perf_counter()
        result = train(prepare_run(cfg, data), tracker, TrainOptions(log_model=False, verbose=0))
        seconds = time.perf_counter() - start
    t0 = time.perf_counter()
    for _ in range(3):
        predict_probs(result.model, data, data.val, crop=cfg.data.crop)
    predict_s = (time.perf_counter() - t0) / 3
    m = result.val_metrics
    recalls = {s: m[f"recall_{s}"] for s in data.class_slugs}
    weakest = min(recalls, key=recalls.get)
    return {
        "backbone": name,
        "seed": seed,
        "accuracy": m["accuracy"],
        "balanced": m["balanced_accuracy"],
        "weakest": weakest,
        "weakest_recall": recalls[weakest],
        "train_ips": len(data.train) * result.fit.epochs_run / result.fit.seconds,
        "predict_ips": len(data.val) / predict_s,
        "params": result.model.count_params(),
        "seconds": seconds,
        "macs": multiply_adds(result.model),
        "recalls": recalls,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="Galaxy10-schema HDF5 file (default: a small synthetic set)")
    parser.add_argument("--gz2", action="store_true", help="import and use the real Galaxy Zoo 2 test bed")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--backbones", default="reference_cnn,resnet,d4_cnn_gmax")
    parser.add_argument(
        "--policy",
        default="galaxy",
        help="augmentation policy of every run (none, reference, "
        "galaxy); none shows what the D4 symmetry adds where augmentation does not teach it",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "float32", "mixed_bfloat16"),
        help="precision of every run (auto: bfloat16 only where this machine computes it natively)",
    )
    parser.add_argument("--tracking-uri", default=None, help="log every run to this MLflow store")
    add_full_flag(parser, {"epochs": 10, "seeds": 2, "backbones": ",".join(BACKBONES)})
    args = parse_with_full(parser)
    if args.data and args.gz2:
        parser.error("give at most one of --data FILE or --gz2")
    names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    import contextlib

    from experiments.settings.run import DataConfig
    from experiments.training import load_training_data
    from models.precision import resolve_precision

    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as tmp:
        os.environ["GALAXY10_CACHE"] = str(Path(tmp) / "cache")
        if args.gz2:
            path = import_gz2(Path(tmp))
        elif args.data:  # work on a copy: the split file is written beside the data
            path = Path(tmp) / Path(args.data).name
            path.write_bytes(Path(args.data).read_bytes())
        else:
            path = synthetic_bed(Path(tmp), n=600, size=args.size)
        data = load_training_data(DataConfig(size=args.size, crop=args.crop), path)
        if args.tracking_uri:
            from experiments.tracking.mlflow_tracker import MlflowTracker
            from experiments.tracking.workspace import Workspace

            def tracker_factory(run_name: str):  # noqa: ANN202
                return MlflowTracker("bench-backbones", run_name, ws=Workspace.of(args.tracking_uri))
        else:
            from experiments.tracking.base import NullTracker

            def tracker_factory(run_name: str):  # noqa: ANN202
                return contextlib.nullcontext(NullTracker())

        kind = "SYNTHETIC" if data.synthetic else "real"
        print(
            f"data: {path.name} ({kind}), {len(data.train)} train / {len(data.val)} val images, "
            f"{data.num_classes} classes ({', '.join(data.class_slugs)}); {args.size} -> {args.crop} px, "
            f"{args.epochs} epochs, {resolve_precision(args.precision)}, {args.policy} policy; "
            "validation split only",
            flush=True,
        )
        rows = []
        for name in names:
            for seed in range(args.seeds if name in SEEDED else 1):
                row = run_one(name, seed, data, args, tracker_factory)
                rows.append(row)
                print(
                    f"  {name:<15} seed {seed}: val acc {row['accuracy']:.3f}, balanced {row['balanced']:.3f}, "
                    f"weakest {row['weakest']} {row['weakest_recall']:.2f}, {row['train_ips']:.0f} train img/s, "
                    f"{row['predict_ips']:.0f} predict img/s, {row['params']:,} params, {row['macs'] / 1e6:.1f}M "
                    f"multiply-adds/image, {row['seconds']:.0f} s",
                    flush=True,
                )
    ref = [r for r in rows if r["backbone"] == "reference_cnn"]
    ref_ips = np.mean([r["train_ips"] for r in ref]) if ref else float("nan")
    ref_pred = np.mean([r["predict_ips"] for r in ref]) if ref else float("nan")
    ref_bal = np.mean([r["balanced"] for r in ref]) if ref else float("nan")
    ref_macs = ref[0]["macs"] if ref else float("nan")
    print(
        "\n| backbone | seeds | val accuracy | balanced accuracy | weakest class (recall) | train img/s (x ref) "
        "| predict img/s (x ref) | parameters | multiply-adds per image (x ref) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rs = [r for r in rows if r["backbone"] == name]
        acc, bal = np.array([r["accuracy"] for r in rs]), np.array([r["balanced"] for r in rs])
        mean_recall = {s: np.mean([r["recalls"][s] for r in rs]) for s in rs[0]["recalls"]}
        weakest = min(mean_recall, key=mean_recall.get)
        ips, pred = np.mean([r["train_ips"] for r in rs]), np.mean([r["predict_ips"] for r in rs])
        spread = lambda a: f" ± {a.std(ddof=1):.3f}" if len(a) > 1 else ""  # noqa: E731
        print(
            f"| {name} | {len(rs)} | {acc.mean():.3f}{spread(acc)} | {bal.mean():.3f}{spread(bal)} "
            f"(x{bal.mean() / ref_bal:.2f}) | {weakest} ({mean_recall[weakest]:.2f}) "
            f"| {ips:.0f} (x{ips / ref_ips:.2f}) "
            f"| {pred:.0f} (x{pred / ref_pred:.2f}) | {rs[0]['params']:,} "
            f"| {rs[0]['macs'] / 1e6:.1f}M (x{rs[0]['macs'] / ref_macs:.2f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
