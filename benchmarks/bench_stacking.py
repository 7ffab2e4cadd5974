"""Why does stacking on cross-fitted fold CNNs lose to its own second stage? Variants measured on one split.

The ensemble's ``crossfit`` mode trains K fold CNNs on train; each fold model embeds the images it did not
see, a second stage (XGBoost, logistic regression) is fit per fold on those held-out embeddings, and the
``stack-*`` candidate fits a logistic meta-learner on [fold-CNN out-of-fold probabilities, second-stage
probabilities from an inner CV] and deploys it on the refit second stage. This script trains the fold CNNs
once and scores, on the validation split only, every design below side by side:

- ``cnn-folds``: the fold CNNs' average (the ``vote-crossfit`` candidate);
- ``gbm``: per-fold second stages on the held-out embeddings, averaged (``gbm-*``);
- ``stack (refit)``: the design as it shipped - meta fit on inner-CV second-stage probabilities, deployed
  on the second stage refit on all held-out rows (the meta-features it is fit on and applied to differ);
- ``stack (bagged)``: the same meta deployed on the inner-CV models' average (consistent meta-features);
- ``stack (balanced)``: ``stack (refit)`` with a class-balanced meta-learner;
- ``stack (inner 10)`` / ``blend (inner 10)``: the meta-features from a 10-fold inner CV (second stages fit
  on 90% of the held-out rows, close to the deployed one) instead of 3-fold (67%);
- ``gbm (balanced)``: the second stages fit with balanced class weights (``class_weights: auto`` under a
  balanced-accuracy study);
- ``average``: CNN and second stage averaged, nothing fitted;
- ``blend``: ``w * CNN + (1 - w) * second stage`` with the one weight ``w`` chosen on the out-of-fold
  log loss (grid 0, 0.05, ..., 1; the same meta-features as the stack, one parameter instead of
  ``2 * C * C + C``);
- ``gbm [emb+cnn]``: the second stage fit on the held-out embeddings *and* the fold CNN's log-probabilities
  (the CNN's opinion as a feature; no meta-learner, no nested CV);
- each also with prior correction (probabilities divided by the training class shares, the decision that
  maximises balanced accuracy), marked ``/prior``.

    python benchmarks/bench_stacking.py                  # quick: synthetic 600, 3 folds, 1 seed, 2 epochs
    python benchmarks/bench_stacking.py --full           # synthetic 1500, 3 and 5 folds, 2 seeds, 8 epochs
    python benchmarks/bench_stacking.py --gz2 --full
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np  # noqa: E402
from common import REALSAMPLES, ROOT, add_full_flag, parse_with_full


def scores(y: np.ndarray, probs: np.ndarray, n: int) -> tuple[float, float]:
    """Accuracy and balanced accuracy (mean recall over the classes present)."""
    pred = probs.argmax(1)
    present = [c for c in range(n) if (y == c).any()]
    return float((pred == y).mean()), float(np.mean([(pred[y == c] == c).mean() for c in present]))


def run(data, cfg, k: int, seed: int, second: str) -> dict[str, tuple[float, float]]:  # noqa: ANN001
    import keras
    from sklearn.linear_model import LogisticRegression

    from ensembles.crossfit import cv_predict_proba, cv_splits, make_folds
    from ensembles.embeddings import CNNEmbedder
    from ensembles.ensemble_model import prior_corrected
    from ensembles.second_stage import full_proba, make_second_stage
    from ensembles.stacking import fit_meta, meta_features, meta_predict
    from experiments.tracking.base import NullTracker
    from experiments.training import TrainOptions, prepare_run, train

    n = data.num_classes
    y_train = data.labels[data.train]
    y_val = data.labels[data.val]
    prior = np.bincount(y_train, minlength=n) / len(y_train)
    folds = make_folds(data.train, y_train, k, seed=seed)
    factory = functools.partial(make_second_stage, second, None, seed=seed, n_jobs=1)
    out: dict[str, list[np.ndarray]] = {}
    oof_cnn, oof_second, oof_second10, oof_y = [], [], [], []
    per_fold = []
    for fold in folds:
        t0 = time.perf_counter()
        result = train(
            prepare_run(
                replace(cfg, train=replace(cfg.train, seed=seed + fold.number)), replace(data, train=fold.train)
            ),
            NullTracker(),
            TrainOptions(log_model=False, verbose=0),
        )
        emb = CNNEmbedder(result.model, cache_dir=False, progress=False).fit()
        held = emb.embed(data.images, fold.heldout, split="held", data_fingerprint=data.fingerprint)
        val = emb.embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint)
        keras.backend.clear_session()
        yh = data.labels[fold.heldout]
        est = factory().fit(held.embeddings, yh)
        inner = cv_splits(yh, 3, seed=seed)
        inner_models = [factory().fit(held.embeddings[a], yh[a]) for a, _ in inner]
        inner_oof = cv_predict_proba(factory, held.embeddings, yh, n, inner)
        inner10_oof = cv_predict_proba(factory, held.embeddings, yh, n, cv_splits(yh, 10, seed=seed))
        balanced = functools.partial(make_second_stage, second, None, seed=seed, n_jobs=1, balanced=True)
        est_bal = balanced().fit(held.embeddings, yh)
        aug_fit = np.concatenate([held.embeddings, meta_features([held.probs])], 1)
        aug_val = np.concatenate([val.embeddings, meta_features([val.probs])], 1)
        aug = factory().fit(aug_fit, yh)
        per_fold.append(
            {
                "cnn": val.probs,
                "second": full_proba(est, val.embeddings, n),
                "bagged": np.mean([full_proba(m, val.embeddings, n) for m in inner_models], 0),
                "aug": full_proba(aug, aug_val, n),
                "balanced": full_proba(est_bal, val.embeddings, n),
            }
        )
        oof_cnn.append(held.probs)
        oof_second.append(inner_oof)
        oof_second10.append(inner10_oof)
        oof_y.append(yh)
        print(
            f"    fold {fold.number + 1}/{k}: {len(fold.train)} train, {len(fold.heldout)} held out, "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    y_oof = np.concatenate(oof_y)
    blocks = [np.concatenate(oof_cnn), np.concatenate(oof_second)]
    meta = fit_meta(blocks, y_oof, seed=seed, kind="logistic")
    w = fit_meta(blocks, y_oof, kind="blend").weight_
    blocks10 = [blocks[0], np.concatenate(oof_second10)]
    meta10 = fit_meta(blocks10, y_oof, seed=seed, kind="logistic")
    w10 = fit_meta(blocks10, y_oof, kind="blend").weight_
    meta_bal = LogisticRegression(C=1.0, max_iter=2000, random_state=seed, class_weight="balanced").fit(
        meta_features(blocks), y_oof
    )
    for f in per_fold:
        out.setdefault("cnn-folds", []).append(f["cnn"])
        out.setdefault(f"gbm-{second}", []).append(f["second"])
        out.setdefault("stack (refit)", []).append(meta_predict(meta, [f["cnn"], f["second"]], n))
        out.setdefault("stack (bagged)", []).append(meta_predict(meta, [f["cnn"], f["bagged"]], n))
        out.setdefault("stack (balanced)", []).append(meta_predict(meta_bal, [f["cnn"], f["second"]], n))
        out.setdefault("average", []).append((f["cnn"] + f["second"]) / 2)
        out.setdefault("blend", []).append(w * f["cnn"] + (1 - w) * f["second"])
        out.setdefault("stack (inner 10)", []).append(meta_predict(meta10, [f["cnn"], f["second"]], n))
        out.setdefault("blend (inner 10)", []).append(w10 * f["cnn"] + (1 - w10) * f["second"])
        out.setdefault(f"gbm-{second} (balanced)", []).append(f["balanced"])
        out.setdefault(f"gbm-{second} [emb+cnn]", []).append(f["aug"])
    print(f"    blend weight of the CNN: {w:.2f} (3-fold inner CV), {w10:.2f} (10-fold)", flush=True)
    res = {}
    for name, probs in out.items():
        p = np.mean(probs, 0)
        res[name] = scores(y_val, p, n)
        res[name + " /prior"] = scores(y_val, prior_corrected(p, prior), n)  # as the +prior twins do
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gz2", action="store_true", help="the real Galaxy Zoo 2 test bed instead of synthetic")
    parser.add_argument("--synthetic-n", type=int, default=600)
    parser.add_argument("--folds", default="3")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--second", default="xgboost", help="second-stage model (xgboost, logreg, ...)")
    add_full_flag(parser, {"synthetic_n": 1500, "folds": "3,5", "seeds": 2, "epochs": 8})
    args = parse_with_full(parser)
    from experiments.settings.run import DataConfig, load_config
    from experiments.training import load_training_data

    rows: dict[tuple[int, int], dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stacking-") as tmp:
        os.environ["GALAXY10_CACHE"] = str(Path(tmp) / "cache")
        path = Path(tmp) / "bed.h5"
        if args.gz2:
            from pipelines.importer import import_folder

            src = REALSAMPLES / "gz2_hart16_sdss"
            import_folder(src, src / "labels.csv", path, size=128, progress=False)
        else:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "experiments.cli",
                    "-q",
                    "data",
                    "synth",
                    "--n",
                    str(args.synthetic_n),
                    "--size",
                    "128",
                    "--seed",
                    "0",
                    "--out",
                    str(path),
                ],
                check=True,
                cwd=ROOT,
            )
        cfg = load_config(
            ROOT / "experiments/configs/reference.yaml",
            [
                "data.size=64",
                "data.crop=48",
                f"train.epochs={args.epochs}",
                "train.patience=null",
                "train.monitor=val_loss",
                "train.precision=auto",
            ],
        )
        data = load_training_data(DataConfig(size=64, crop=48), path)
        kind = "SYNTHETIC" if data.synthetic else "real"
        print(
            f"data: {'GZ2' if args.gz2 else 'synthetic'} ({kind}), {len(data.train)} train / {len(data.val)} "
            f"val, {data.num_classes} classes; reference recipe 64 -> 48 px, {args.epochs} epochs per fold CNN; "
            f"second stage {args.second}; validation split only",
            flush=True,
        )
        for k in [int(x) for x in args.folds.split(",")]:
            for seed in range(args.seeds):
                print(f"  {k} folds, seed {seed}", flush=True)
                rows[(k, seed)] = run(data, cfg, k, seed, args.second)
                for name, (acc, bal) in rows[(k, seed)].items():
                    print(f"    {name:<28} acc {acc:.3f} bal {bal:.3f}", flush=True)
    names = list(next(iter(rows.values())))
    keys = list(rows)
    print("\n| design | " + " | ".join(f"{k} folds seed {s}: acc / bal" for k, s in keys) + " | mean acc | mean bal |")
    print("|---|" + "---|" * (len(keys) + 2))
    for name in names:
        cells = [f"{rows[key][name][0]:.3f} / {rows[key][name][1]:.3f}" for key in keys]
        acc = np.mean([rows[key][name][0] for key in keys])
        bal = np.mean([rows[key][name][1] for key in keys])
        print(f"| {name} | " + " | ".join(cells) + f" | {acc:.3f} | {bal:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
