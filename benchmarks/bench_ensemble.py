"""Ensemble costs on the synthetic default, measured in one run.

1. Embedding throughput (images/s) of :class:`ensembles.embeddings.CNNEmbedder` (cache off) for
   two CNNs: the tune_quick recipe (64 px resize, 48 px crop, trained briefly here so the
   embeddings mean something) and the reference CNN at the default 128 px / 88 px (untrained:
   speed does not depend on the weights), each without and with 8-view TTA.
2. Fit time (and predict time) of every second-stage model (``ensembles.second_stage``, with the
   values of ``experiments/configs/ensemble.yaml`` where it sets them, else the defaults, one
   thread and BLAS/OpenMP pools limited to one thread, as ``galaxy10 ensemble`` runs them) on the trained CNN's
embeddings, at the sizes the comparison fits them: one cross-
   fitting fold's held-out rows (train / 3) and the whole training split. Validation accuracy
   of the model fit on the fold rows is printed for orientation only (embeddings of the CNN's own
   training images are over-fit; the comparison never uses those). Last, logistic regression
   again with the default thread pools, to show what the one-thread limit buys on shared cores.

The CPU count and load average are printed because other processes on the machine skew the
absolute numbers; ratios are relative to logistic regression measured in the same run.

Data: ``--data FILE`` (any Galaxy10-schema file of at least 128 px), by default a SYNTHETIC set of
``--synthetic-n`` images rendered for the run. Caches and the split go to a temporary folder.

Usage: ``python benchmarks/bench_ensemble.py [--data FILE] [--epochs 3]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
from common import ROOT, synthetic_bed


def _rate(fn, n: int, repeats: int = 2) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="Galaxy10-schema HDF5 file (default: a synthetic set rendered for the run)")
    parser.add_argument("--synthetic-n", type=int, default=1000, help="images of the default synthetic set")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the quick CNN whose embeddings are used")
    parser.add_argument("--tta-images", type=int, default=512, help="images embedded with 8-view TTA")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as tmp:
        os.environ["GALAXY10_CACHE"] = str(Path(tmp) / "cache")
        if args.data:  # work on a copy: the split file is written beside the data
            args.data = str(shutil.copy(args.data, Path(tmp) / Path(args.data).name))
        else:
            args.data = str(synthetic_bed(Path(tmp), n=args.synthetic_n, size=128))
        measure(args)


def measure(args: argparse.Namespace) -> None:
    """Embedding throughput and second-stage fit times on ``args.data``."""

    import keras
    from threadpoolctl import threadpool_limits

    from ensembles.embeddings import CNNEmbedder
    from ensembles.second_stage import MODEL_NAMES, full_proba, make_second_stage
    from experiments.settings.ensemble import config_from_dict, read_config_yaml
    from experiments.settings.run import ModelConfig, load_config
    from experiments.tracking.base import NullTracker
    from experiments.training import TrainOptions, load_training_data, prepare_run, train
    from models import build_model

    print(f"CPUs: {os.cpu_count()}, load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    cfg = load_config(
        str(ROOT / "experiments" / "configs" / "reference.yaml"),
        [
            f"data.path={args.data}",
            "data.size=64",
            "data.crop=48",
            f"train.epochs={args.epochs}",
            "train.patience=null",
            "augment.policy=galaxy",
        ],
    )
    data = load_training_data(cfg.data)
    kind = "SYNTHETIC" if data.synthetic else data.provenance
    print(f"data: {data.path} ({kind}), {len(data.train)} train / {len(data.val)} val images")
    start = time.perf_counter()
    result = train(prepare_run(cfg, data), NullTracker(), TrainOptions(log_model=False, verbose=0))
    print(
        f"quick CNN (tune_quick recipe at 64/48 px, {args.epochs} epochs): trained in "
        f"{time.perf_counter() - start:.0f} s, val accuracy {result.val_metrics['accuracy']:.3f}"
    )

    # 1. Embedding throughput
    rows = np.concatenate([data.train, data.val])
    ref_data = load_training_data(load_config(None, [f"data.path={args.data}"]).data)
    keras.utils.set_random_seed(0)
    reference = build_model(ModelConfig(), input_size=88, num_classes=data.num_classes)
    print("\n1. embedding throughput (images/s, cache off, batch 256)")
    print(f"   {'CNN':<34} {'plain':>8} {'TTA x8':>8}")
    for label, model, source in (
        ("tune_quick CNN, 64 px -> 48 crop", result.model, data),
        ("reference CNN, 128 px -> 88 crop", reference, ref_data),
    ):
        plain = CNNEmbedder(model, cache_dir=False, progress=False).fit()
        tta = CNNEmbedder(model, tta=True, cache_dir=False, progress=False).fit()
        sub = rows[: args.tta_images]
        r_plain = _rate(lambda e=plain, s=source: e.embed(s.images, rows, split="b", data_fingerprint="b"), len(rows))
        r_tta = _rate(
            lambda e=tta, s=source, r=sub: e.embed(s.images, r, split="b", data_fingerprint="b"), len(sub), repeats=1
        )
        print(f"   {label:<34} {r_plain:8.0f} {r_tta:8.0f}")

    # 2. Second-stage fit times on the trained CNN's embeddings
    embedder = CNNEmbedder(result.model, cache_dir=False, progress=False).fit()
    tr = embedder.embed(data.images, data.train, split="train", data_fingerprint=data.fingerprint)
    va = embedder.embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint)
    y_tr, y_va = data.labels[data.train], data.labels[data.val]
    shipped = config_from_dict(read_config_yaml(os.path.join(ROOT, "experiments", "configs", "ensemble.yaml")))
    fold = len(y_tr) // 3
    print(
        f"\n2. second-stage fit time (s, 1 thread) on {tr.embeddings.shape[1]}-d embeddings; "
        f"ratio = fit time / logreg's"
    )
    print(
        f"   {'model':<14} {'fit ' + str(fold) + ' rows':>13} {'ratio':>6} {'fit ' + str(len(y_tr)) + ' rows':>14} "
        f"{'ratio':>6} {'predict val':>11} {'val acc':>8}"
    )
    base: dict[str, float] = {}
    limit = threadpool_limits(limits=1)  # what galaxy10 ensemble does (n_jobs: null)
    for name in MODEL_NAMES:
        params = shipped.second_stage.get(name, {})
        times = {}
        for n in (fold, len(y_tr)):
            est = make_second_stage(name, params, seed=0, n_jobs=1)
            start = time.perf_counter()
            est.fit(tr.embeddings[:n], y_tr[:n])
            times[n] = time.perf_counter() - start
            if n == fold:
                start = time.perf_counter()
                probs = full_proba(est, va.embeddings, data.num_classes)
                predict = time.perf_counter() - start
                acc = float(np.mean(probs.argmax(axis=1) == y_va))
        if name == "logreg":
            base = times
        print(
            f"   {name:<14} {times[fold]:13.2f} {times[fold] / base[fold]:6.1f} {times[len(y_tr)]:14.2f} "
            f"{times[len(y_tr)] / base[len(y_tr)]:6.1f} {predict:11.3f} {acc:8.3f}"
        )
    limit.restore_original_limits()
    est = make_second_stage("logreg", shipped.second_stage.get("logreg", {}), seed=0, n_jobs=1)
    start = time.perf_counter()
    est.fit(tr.embeddings[:fold], y_tr[:fold])
    free = time.perf_counter() - start
    print(
        f"   logreg on {fold} rows with the default BLAS/OpenMP threads: {free:.2f} s "
        f"({free / base[fold]:.1f}x the 1-thread time)"
    )
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
