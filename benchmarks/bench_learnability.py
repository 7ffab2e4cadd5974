"""How learnable is a test bed's rare class? K-fold out-of-fold probabilities of one recipe, and what any
threshold on them can buy at the bed's prevalence.

The workflow bench (``bench_workflow.py``) asks the workflow to beat the reference recipe on balanced
accuracy *and* rare-class recall without losing accuracy. The reference recipe on a rare class usually
never predicts it, so its accuracy is the majority share; a rare-class call then gains accuracy only where
it is right more often than wrong. This bench measures, for one recipe (``--config`` plus ``--set``), the
rare class's detector quality: every image of the bed gets out-of-fold probabilities from a model that
never saw it (K stratified folds over *all* images of the bed - a property of the data and the recipe,
not a model selection; nothing is tuned here), then :func:`experiments.training.evaluation.rare_class_tradeoff`
reads the one-vs-rest ROC at a prevalence: the accuracy of never predicting the class, the best accuracy
any threshold reaches, the largest rare recall that costs no accuracy, and the best balanced accuracy.
Each with a 95% bootstrap CI over images. Fixed epochs, no early stopping, no best-epoch restore (the
held-out fold is never used to choose anything).

    python benchmarks/bench_learnability.py                      # quick: synthetic 600, 3 folds, 3 epochs
    python benchmarks/bench_learnability.py --full               # rings, 5 folds, 20 epochs, 128 -> 88 px
    python benchmarks/bench_learnability.py --bed rings_all --prevalence 0.113   # 235 rings: a detector's best case
    python benchmarks/bench_learnability.py --bed rings --set augment.targets=auto --set augment.tta=true
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np  # noqa: E402
from common import ROOT, add_full_flag, parse_with_full

KEYS = (
    "auc",
    "never_accuracy",
    "best_accuracy",
    "best_accuracy_recall",
    "recall_at_no_loss",
    "best_balanced_accuracy",
    "best_balanced_accuracy_accuracy",
    "best_balanced_accuracy_recall",
)


def out_of_fold(cfg, data, folds: int, seed: int) -> np.ndarray:  # noqa: ANN001
    """Probabilities of every image of ``data`` from the fold model that did not train on it."""
    from ensembles.crossfit import make_folds
    from experiments.tracking.base import NullTracker
    from experiments.training import TrainOptions, predict_probs, prepare_run, train

    every = np.arange(len(data.labels))
    probs = np.zeros((len(every), data.num_classes), dtype=np.float64)
    for fold in make_folds(every, data.labels, folds, seed=seed):
        start = time.perf_counter()
        fold_data = replace(data, train=fold.train, val=fold.heldout, test=np.zeros(0, dtype=np.int64))
        result = train(
            prepare_run(cfg, fold_data), NullTracker(), TrainOptions(log_model=False, verbose=0, restore_best=False)
        )
        probs[fold.heldout] = predict_probs(
            result.model, fold_data, fold.heldout, crop=cfg.data.crop, tta=cfg.augment.tta
        )
        print(
            f"  fold {fold.number + 1}/{folds}: trained on {len(fold.train)}, scored {len(fold.heldout)} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    return probs


def tradeoff_with_ci(
    y: np.ndarray, probs: np.ndarray, rare: int, prevalence: float | None, seed: int, resamples: int
) -> dict[str, tuple[float, float, float]]:
    """:func:`rare_class_tradeoff` with a 95% bootstrap CI over images (resampled within each class)."""
    from experiments.training.evaluation import rare_class_tradeoff

    point = rare_class_tradeoff(y, probs, rare, prevalence=prevalence)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    boot = []
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(rows, len(rows)) for rows in by_class])
        boot.append(rare_class_tradeoff(y[idx], probs[idx], rare, prevalence=point["prevalence"]))
    return {k: (point[k], *np.nanpercentile([b[k] for b in boot], [2.5, 97.5])) for k in KEYS}


def main() -> int:
    from common import make_bed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bed",
        default="synthetic",
        help="rings (30 rings, 235 others), rings_all (235 + 235), gz2, synthetic, or a Galaxy10-schema HDF5 file",
    )
    parser.add_argument("--config", default=str(ROOT / "experiments/configs/reference.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=88)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rare", help="the class to study (slug or index); default the rarest")
    parser.add_argument(
        "--prevalence", type=float, help="read the trade-off at this rare-class share (default: the bed's own)"
    )
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--synthetic-n", type=int, default=600)
    parser.add_argument(
        "--tracking-uri",
        help="also log the measurement (parameters, metrics with CIs, the "
        "out-of-fold probabilities) as one run of experiment bench-learnability in this MLflow store",
    )
    add_full_flag(parser, {"bed": "rings", "folds": 5, "epochs": 20, "resamples": 1000})
    args = parse_with_full(parser)

    from experiments.settings.run import load_config
    from experiments.training import load_training_data

    with tempfile.TemporaryDirectory(prefix="bench-learnability-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "GALAXY10_CACHE": str(work / "cache"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        os.environ["GALAXY10_CACHE"] = env["GALAXY10_CACHE"]
        if Path(args.bed).suffix in (".h5", ".hdf5"):
            path = work / Path(args.bed).name  # a copy: the split file is written beside the data
            path.write_bytes(Path(args.bed).read_bytes())
        else:
            path = make_bed(args.bed, work, env, synthetic_n=args.synthetic_n, size=max(128, args.size))
        cfg = load_config(
            args.config,
            [
                f"data.size={args.size}",
                f"data.crop={args.crop}",
                f"train.epochs={args.epochs}",
                "train.patience=null",
                f"train.seed={args.seed}",
                *args.set,
            ],
        )
        data = load_training_data(cfg.data, path)
        counts = np.bincount(data.labels, minlength=data.num_classes)
        if args.rare is None:
            present = np.where(counts > 0, counts, counts.max() + 1)
            rare = int(np.argmin(present))
            if (present == present[rare]).sum() > 1:
                raise SystemExit(
                    f"bench_learnability: several classes share the smallest count ({present[rare]}); "
                    f"name one with --rare (classes: {', '.join(data.class_slugs)})"
                )
        elif args.rare.isdigit():
            rare = int(args.rare)
        else:
            rare = list(data.class_slugs).index(args.rare) if args.rare in data.class_slugs else -1
        if not 0 <= rare < data.num_classes:
            raise SystemExit(f"bench_learnability: unknown class {args.rare!r}; classes: {', '.join(data.class_slugs)}")
        kind = "SYNTHETIC" if data.synthetic else "real"
        print(
            f"bed {args.bed} ({kind}): {len(data.labels)} images, {data.class_slugs[rare]} {counts[rare]}; "
            f"{cfg.model.name}, {args.epochs} epochs, {args.size} -> {args.crop} px, TTA {cfg.augment.tta}, "
            f"targets {cfg.augment.targets}, class weights {cfg.train.class_weights}, {args.folds} folds",
            flush=True,
        )
        start = time.perf_counter()
        probs = out_of_fold(cfg, data, args.folds, args.seed)
        out = tradeoff_with_ci(data.labels.astype(np.int64), probs, rare, args.prevalence, args.seed, args.resamples)
    share = args.prevalence if args.prevalence is not None else counts[rare] / counts.sum()
    print(
        f"\nout-of-fold over {len(data.labels)} images in {time.perf_counter() - start:.0f} s; "
        f"read at {data.class_slugs[rare]} share {share:.3f}"
    )
    print("| measure | value [95% CI] |\n|---|---|")
    for key in KEYS:
        v = out[key]
        print(f"| {key} | {v[0]:.3f} [{v[1]:.2f}, {v[2]:.2f}] |")
    if args.tracking_uri:
        from experiments.tracking.mlflow_tracker import MlflowTracker
        from experiments.tracking.workspace import Workspace

        with MlflowTracker(
            "bench-learnability",
            f"{args.bed}-{cfg.model.name}-{args.size}px",
            ws=Workspace.of(args.tracking_uri),
            tags={"data.synthetic": str(data.synthetic).lower(), "data.fingerprint": data.fingerprint},
        ) as run:
            run.log_params(
                {
                    "bed": args.bed,
                    "model": cfg.model.name,
                    "epochs": args.epochs,
                    "size": args.size,
                    "crop": args.crop,
                    "folds": args.folds,
                    "seed": args.seed,
                    "rare": data.class_slugs[rare],
                    "prevalence": f"{share:.4f}",
                    "sets": " ".join(args.set),
                }
            )
            run.log_metrics(
                {
                    **{k: v[0] for k, v in out.items()},
                    **{f"{k}_ci_low": v[1] for k, v in out.items()},
                    **{f"{k}_ci_high": v[2] for k, v in out.items()},
                }
            )
            run.log_dict({"labels": data.labels.tolist(), "probs": np.round(probs, 6).tolist()}, "out_of_fold.json")
        print(f"logged to {args.tracking_uri} (experiment bench-learnability)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
