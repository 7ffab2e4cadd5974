"""``galaxy10 catalog`` against a plain loop calling the model's predict per batch, and its peak memory.

1. Throughput: the same model (a freshly built backbone; its weights do not change the speed) and the same
   HDF5 rows, (a) a plain loop reading batches and calling ``Predictor.predict`` (what ``galaxy10 predict``
   does), (b) the catalog job (``run_catalog``: parts, uncertainty columns, decoding ahead, the merge).
   Goal: (b) >= 90% of (a)'s images/s.
2. Memory: peak resident memory of the catalog job, each run in a fresh process, on N and 10 x N rows of
   the same images (a file 10x larger): it should stay flat, because only one chunk's pixels are held.
3. Spark: the model logged to a temporary MLflow store, the same rows through ``--engine spark``
   (``local[*]``, ``mlflow.pyfunc.spark_udf``) against the native job (``--no-spark`` skips it; it needs
   pyspark and Java 17). Spark's start-up is part of its time.

The images are random uint8 pixels written to a temporary Galaxy10-schema file (marked SYNTHETIC; their
content does not change the speed). Run: ``python benchmarks/bench_catalog.py`` (quick) or ``--full``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, add_full_flag, parse_with_full  # noqa: I001 - sets sys.path first

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
from bench_catalog import make_predictor
from experiments.catalog.inputs import plan_catalog_inputs
from experiments.catalog.job import run_catalog
predictor = make_predictor({backbone!r}, {size}, {crop}, {tta})
t0 = time.perf_counter()
result = run_catalog(plan_catalog_inputs([{data!r}]), predictor, {out!r}, chunk_size={chunk}, workers=2)
print(json.dumps({{"seconds": time.perf_counter() - t0, "rows": result.n_rows,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def write_bed(path: Path, n: int, side: int, seed: int = 0) -> Path:
    """``n`` random ``side``-px images in a Galaxy10-schema file (SYNTHETIC), written in slabs."""
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (n, side, side, 3), dtype=np.uint8, chunks=(1, side, side, 3))
        for start in range(0, n, 1000):
            stop = min(n, start + 1000)
            images[start:stop] = rng.integers(0, 256, (stop - start, side, side, 3), dtype=np.uint8)
        f.create_dataset("ans", data=np.resize(np.arange(10, dtype=np.uint8), n))
        f.attrs["synthetic"] = True
        f.attrs["generator"] = "benchmarks/bench_catalog.py (random pixels)"
    return path


def make_predictor(backbone: str, size: int, crop: int, tta: bool):  # noqa: ANN201 - a Predictor
    """A Predictor around a freshly built backbone (untrained: speed only), with the platform's preprocessing."""
    from experiments.serving.predictor import ModelCard, keras_predictor
    from experiments.settings.run import load_config
    from models import build_model
    from pipelines.classes import GALAXY10

    cfg = load_config(None, [f"model.name={backbone}"])
    model = build_model(cfg.model, input_size=crop, num_classes=10, precision="auto")
    card = ModelCard(
        uri=f"bench:{backbone}", kind="keras", size=size, crop=crop, class_names=GALAXY10.names, synthetic=True
    )
    return keras_predictor(card, (model, {"size": size, "crop": crop, "tta": tta}))


def plain_loop(predictor, data: Path, batch: int) -> float:  # noqa: ANN001
    """Seconds for a loop reading ``batch`` rows at a time and calling predict (no output written)."""
    from pipelines.reader import Galaxy10File

    t0 = time.perf_counter()
    with Galaxy10File(data) as f:
        for _, images in f.iter_batches(batch, np.arange(len(f))):
            predictor.predict(images)
    return time.perf_counter() - t0


def child_run(args: argparse.Namespace, data: Path, out: Path) -> dict:
    code = CHILD.format(
        root=str(ROOT),
        bench=str(Path(__file__).parent),
        backbone=args.backbone,
        size=args.size,
        crop=args.crop,
        tta=args.tta,
        data=str(data),
        out=str(out),
        chunk=args.chunk_size,
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"catalog child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="rows of the throughput bed (memory: x1 and x10)")
    parser.add_argument("--side", type=int, default=64, help="stored image side in pixels")
    parser.add_argument("--backbone", default="reference_cnn")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--tta", action="store_true", help="8-view test-time augmentation (8x the model calls)")
    parser.add_argument("--batch", type=int, default=64, help="images per model call, both arms")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2, help="throughput: best of this many runs per arm")
    parser.add_argument("--no-spark", action="store_true", help="skip the Spark arm")
    add_full_flag(parser, {"rows": 4000, "repeats": 3})
    args = parse_with_full(parser, argv)
    from experiments.catalog.inputs import plan_catalog_inputs
    from experiments.catalog.job import run_catalog

    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        tmp = Path(tmp)
        data = write_bed(tmp / "bed.h5", args.rows, args.side)
        predictor = make_predictor(args.backbone, args.size, args.crop, args.tta)
        predictor.predict(np.zeros((4, args.side, args.side, 3), np.uint8))  # warm-up: graph tracing
        plain, job = [], []
        for r in range(args.repeats):
            plain.append(plain_loop(predictor, data, args.batch))
            t0 = time.perf_counter()
            run_catalog(
                plan_catalog_inputs([str(data)]),
                predictor,
                tmp / f"cat{r}.parquet",
                chunk_size=args.chunk_size,
                workers=2,
                batch_size=args.batch,
            )
            job.append(time.perf_counter() - t0)
        a, b = args.rows / min(plain), args.rows / min(job)
        print(
            f"\n1. throughput, {args.rows} rows of {args.side} px, {args.backbone} {args.size}->{args.crop} px, "
            f"TTA {'on' if args.tta else 'off'}, batch {args.batch}, best of {args.repeats}, {os.cpu_count()} CPUs:"
        )
        print(f"   plain predict loop : {a:8.1f} images/s")
        print(f"   galaxy10 catalog   : {b:8.1f} images/s  = {100 * b / a:.0f}% of the plain loop (goal >= 90%)")

        big = write_bed(tmp / "bed10.h5", 10 * args.rows, args.side, seed=1)
        small_run = child_run(args, data, tmp / "m1.parquet")
        big_run = child_run(args, big, tmp / "m10.parquet")
        print(f"\n2. peak resident memory of the catalog job (fresh process each, chunk {args.chunk_size}):")
        print(f"   {small_run['rows']:>7} rows: {small_run['peak_mib']:7.0f} MiB ({small_run['seconds']:.1f} s)")
        print(
            f"   {big_run['rows']:>7} rows: {big_run['peak_mib']:7.0f} MiB ({big_run['seconds']:.1f} s)  "
            f"= x{big_run['peak_mib'] / small_run['peak_mib']:.2f} for x10 the rows"
        )
        print(f"   (the 10x file holds {10 * args.rows * args.side * args.side * 3 / 2**20:.0f} MiB of pixels)")
        missing = spark_missing()
        if args.no_spark:
            pass
        elif missing:
            print(f"\n3. Spark arm skipped: {missing} (--no-spark skips it on purpose)")
        else:
            spark_arm(args, data, tmp)
    return 0


def spark_missing() -> str | None:
    """Why the Spark arm cannot run here (no pyspark, no Java runtime), or None."""
    import importlib.util
    import os
    import shutil

    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install 'galaxy10-platform[spark]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime on PATH or in JAVA_HOME (Debian: apt-get install openjdk-17-jre-headless)"
    return None


def spark_arm(args: argparse.Namespace, data: Path, tmp: Path) -> None:
    """Arm 3: the same rows, native job vs ``--engine spark`` local[*], with a logged model."""
    from experiments.catalog.inputs import plan_catalog_inputs
    from experiments.catalog.job import run_catalog
    from experiments.catalog.spark import run_catalog_spark
    from experiments.serving.predictor import load_predictor
    from experiments.settings.run import load_config
    from experiments.tracking.mlflow_tracker import MlflowTracker
    from experiments.tracking.workspace import Workspace
    from models import build_model
    from pipelines.classes import GALAXY10
    from pipelines.preprocess import PREPROCESS_VERSION

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = load_config(None, [f"model.name={args.backbone}"])
    model = build_model(cfg.model, input_size=args.crop, num_classes=10, precision="float32")
    meta = {
        "size": args.size,
        "crop": args.crop,
        "preprocess_version": PREPROCESS_VERSION,
        "class_names": list(GALAXY10.names),
        "class_slugs": list(GALAXY10.slugs),
        "data_fingerprint": "bench",
        "synthetic": True,
        "provenance": "benchmarks/bench_catalog.py (untrained)",
        "tta": args.tta,
    }
    with MlflowTracker("bench-catalog", "model", ws=Workspace.of(uri)) as tracker:
        model_uri = tracker.log_keras_model(
            model, meta=meta, input_example=np.zeros((1, args.crop, args.crop, 3), np.float32)
        )
    predictor = load_predictor(model_uri, ws=Workspace.of(uri))
    inputs = plan_catalog_inputs([str(data)])
    t0 = time.perf_counter()
    run_catalog(inputs, predictor, tmp / "native.parquet", chunk_size=args.chunk_size, workers=2, batch_size=args.batch)
    native = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_catalog_spark(inputs, predictor, tmp / "spark.parquet", master="local[*]")
    spark = time.perf_counter() - t0
    print(f"\n3. Spark local[*] vs native, {args.rows} rows (float32 model logged to MLflow, {os.cpu_count()} CPUs):")
    print(f"   native catalog job : {args.rows / native:8.1f} images/s ({native:.1f} s)")
    print(
        f"   --engine spark     : {args.rows / spark:8.1f} images/s ({spark:.1f} s, Spark start-up included) "
        f"= {100 * native / spark:.0f}% of the native job's speed"
    )


if __name__ == "__main__":
    raise SystemExit(main())
