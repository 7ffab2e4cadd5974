"""Does a soft vote beat the better of its members? Validation evidence for the champion rule's tie-break.

On the real GZ2 bed, for each split seed: ``galaxy10 train`` with ``reference.yaml`` as shipped, with the
catalog study's start point (the orientation-pooled D4 CNN at 64 -> 48 px, ``galaxy`` policy, 8-view TTA,
40 epochs) and with the reference CNN at that budget (balanced class weights); then the validation
metrics of each model and of the soft votes (mean probabilities) of every pair and of all three. Only the
VALIDATION split is scored: the default seeds (2, 3, 4) are not the seeds ``bench_workflow.py`` scores on
test, so the rule is not chosen on those test images. Everything runs in a temporary folder.

    python benchmarks/bench_votes.py                 # quick: synthetic 600 images, seed 2, 3 epochs
    python benchmarks/bench_votes.py --full          # GZ2, split seeds 2, 3, 4, the configs' own epochs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np  # noqa: E402
from common import REALSAMPLES, ROOT, add_full_flag, parse_with_full

G10 = [sys.executable, "-m", "experiments.cli", "-q"]
D4 = ["--set", "model.name=d4_cnn", "--set", "model.params={filters: [4, 8, 16, 16], group_pool: max}"]
SMALL = [
    "--set",
    "data.size=64",
    "--set",
    "data.crop=48",
    "--set",
    "augment.policy=galaxy",
    "--set",
    "augment.tta=true",
    "--set",
    "train.precision=auto",
    "--set",
    "train.epochs=40",
]
MODELS = {"reference": [], "d4": [*D4, *SMALL], "reference_cnn_48": [*SMALL, "--set", "train.class_weights=balanced"]}


def galaxy10(*args: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run([*G10, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_votes: `galaxy10 {' '.join(args)}` failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="2", help="comma-separated split seeds")
    parser.add_argument("--gz2", action="store_true", help="the real GZ2 bed (default: synthetic)")
    parser.add_argument("--epochs", type=int, default=3, help="cap every model's epochs (0: the configs' own)")
    add_full_flag(parser, {"seeds": "2,3,4", "gz2": True, "epochs": 0})
    args = parse_with_full(parser)
    from experiments.serving.predictor import load_predictor, predict_file_rows
    from experiments.tracking.workspace import Workspace
    from experiments.training.evaluation import classification_metrics
    from pipelines.reader import Galaxy10File
    from pipelines.splits import ensure_split

    rows_out = []
    with tempfile.TemporaryDirectory(prefix="bench-votes-") as tmp:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        env = {
            **os.environ,
            "GALAXY10_CACHE": str(work / "cache"),
            "MLFLOW_TRACKING_URI": uri,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        cap = ["--set", f"train.epochs={args.epochs}"] if args.epochs else []
        for seed in [int(s) for s in args.seeds.split(",")]:
            data = work / f"bed-{seed}.h5"  # one file per seed: a file keeps the split it was made with
            if args.gz2:
                src = REALSAMPLES / "gz2_hart16_sdss"
                galaxy10(
                    "data",
                    "import",
                    str(src),
                    "--labels",
                    str(src / "labels.csv"),
                    "--size",
                    "128",
                    "--out",
                    str(data),
                    cwd=work,
                    env=env,
                )
            else:
                galaxy10(
                    "data", "synth", "--n", "600", "--size", "128", "--seed", "0", "--out", str(data), cwd=work, env=env
                )
            split = ensure_split(data, seed=seed)
            with Galaxy10File(data) as f:
                labels = np.asarray(f.labels()).astype(int)
                slugs = [str(c) for c in range(int(labels.max()) + 1)]
            val = np.asarray(split.val)
            probs = {}
            for name, extra in MODELS.items():
                out = galaxy10(
                    "train",
                    "--config",
                    str(ROOT / "experiments/configs/reference.yaml"),
                    "--data",
                    str(data),
                    "--json",
                    "--set",
                    f"data.split_seed={seed}",
                    "--set",
                    f"train.seed={seed}",
                    *extra,
                    *cap,
                    cwd=work,
                    env=env,
                )
                model_uri = json.loads(out)["model_uri"]
                probs[name] = predict_file_rows(load_predictor(model_uri, ws=Workspace.of(uri)), data, val)
            names = list(probs)
            pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
            combos = [(n,) for n in names] + pairs + [tuple(names)]
            for combo in combos:
                m = classification_metrics(labels[val], np.mean([probs[c] for c in combo], axis=0), slugs)
                rows_out.append((seed, " + ".join(combo), m["accuracy"], m["balanced_accuracy"], m["log_loss"]))
                print(
                    f"  seed {seed} {' + '.join(combo):<45} val acc {m['accuracy']:.3f} "
                    f"bal {m['balanced_accuracy']:.3f} "
                    f"log loss {m['log_loss']:.3f}",
                    flush=True,
                )
    print(f"\n{'GZ2' if args.gz2 else 'SYNTHETIC 600'}, validation split ({len(val)} images per seed)\n")
    print("| split seed | model or vote | val accuracy | val balanced accuracy | val log loss |")
    print("|---|---|---|---|---|")
    for seed, combo, acc, bal, ll in rows_out:
        print(f"| {seed} | {combo} | {acc:.3f} | {bal:.3f} | {ll:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
