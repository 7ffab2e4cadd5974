"""Data-side timings, measured in one run: synthetic rendering rate and preprocessing cost.

1. ``synth.generator.render_dataset`` images per second on ``--n`` images of ``--size`` px.
2. Preprocessing of ``--prep-n`` uint8 images: ours (``resize_images`` to 128 px with OpenCV area
   averaging, then ``center_crop`` to 88 px, all uint8) against the reference project's way
   (``tf.image.resize`` of the whole array as float32 to 128 px, then slicing the centre 88 px),
   printed as time per 1,000 images, their ratio, and peak extra memory of each. Each method runs
   in a fresh process so its peak resident memory is its own.
3. For the record, the resize backends we chose between: OpenCV ``INTER_AREA`` vs Pillow ``BOX``.

Usage: ``python benchmarks/bench_data.py [--n 32] [--size 256] [--prep-n 1000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from common import quiet_startup

RESIZE, CROP = 128, 88


def _peak_rss_reset() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _ours(images: np.ndarray) -> np.ndarray:
    from pipelines.preprocess import center_crop, resize_images

    return np.ascontiguousarray(center_crop(resize_images(images, RESIZE), CROP))


def _reference(images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    resized = tf.image.resize(images.astype(np.float32), [RESIZE, RESIZE])
    lo = (RESIZE - CROP) // 2
    return resized[:, lo : lo + CROP, lo : lo + CROP].numpy()


def _pillow_box(images: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((RESIZE, RESIZE), Image.Resampling.BOX)) for im in images])


def _measure(method: str, images_path: str, repeats: int, out_path: str) -> dict:
    """Run in a fresh process: best-of-``repeats`` time and peak extra resident memory of ``method``."""
    quiet_startup()
    fn = {"ours": _ours, "reference": _reference, "pillow_box": _pillow_box}[method]
    images = np.load(images_path)
    fn(images[:4])  # warm up: imports, TF runtime start-up
    times, peak_kib = [], 0
    for _ in range(repeats):
        exact = _peak_rss_reset()
        base_kib = _status_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        out = fn(images)
        times.append(time.perf_counter() - t0)
        top = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_kib = max(peak_kib, top - base_kib)
        del out
    out = fn(images)
    np.save(out_path, np.asarray(out))
    return {"seconds": min(times), "peak_mib": peak_kib / 1024, "exact_peak": exact}


def _in_fresh_process(*args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_measure, *args).result()


def bench_render(tmp: Path, n: int, size: int, workers: int | None) -> np.ndarray | None:
    """Time ``render_dataset``; return its images (None when the generator is not available)."""
    try:
        from synth.generator import render_dataset
    except ImportError as err:
        print(f"1. synthetic rendering: NOT MEASURED, synth.generator is not importable ({err})")
        return None
    from pipelines.reader import Galaxy10File

    t0 = time.perf_counter()
    path = render_dataset(tmp / "bench_synth.h5", n=n, size=size, seed=0, workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    print(
        f"1. synthetic rendering: {n} images of {size} px in {seconds:.2f} s = "
        f"{n / seconds:.1f} images/s (workers={workers or 'default'}, {os.cpu_count()} CPUs, "
        "including pool start-up and HDF5 write)"
    )
    with Galaxy10File(path) as f:
        return f.images()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="synthetic images to render (default: 32)")
    parser.add_argument("--size", type=int, default=256, help="image size in px (default: 256)")
    parser.add_argument("--prep-n", type=int, default=1000, help="images to preprocess (default: 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats, best kept (default: 3)")
    parser.add_argument("--workers", type=int, default=None, help="render_dataset workers (default: its own)")
    args = parser.parse_args()
    quiet_startup()

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp_name:
        tmp = Path(tmp_name)
        rendered = bench_render(tmp, args.n, args.size, args.workers)
        if rendered is None:
            source = "random uint8 noise (no synthetic generator)"
            shape = (64, args.size, args.size, 3)
            rendered = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        else:
            source = f"the {len(rendered)} rendered synthetic images"
        reps = -(-args.prep_n // len(rendered))
        images = np.concatenate([rendered] * reps)[: args.prep_n]
        images_path = tmp / "images.npy"
        np.save(images_path, images)
        print(
            f"2. preprocessing {len(images)} images {args.size} -> {RESIZE} px -> centre {CROP} px, "
            f"tiled from {source}; input {images.nbytes / 2**20:.0f} MiB; best of {args.repeats}, "
            "each method in a fresh process"
        )
        res = {
            m: _in_fresh_process(m, str(images_path), args.repeats, str(tmp / f"{m}.npy"))
            for m in ("ours", "reference", "pillow_box")
        }
        per_1000 = {m: 1000 * r["seconds"] / len(images) for m, r in res.items()}
        ours, ref = np.load(tmp / "ours.npy"), np.load(tmp / "reference.npy")
        mem = "peak RSS" if res["ours"]["exact_peak"] else "maxrss delta"
        for name, label in (
            ("ours", "ours (cv2 INTER_AREA uint8, crop)"),
            ("reference", "reference (tf.image.resize f32, slice)"),
        ):
            print(f"   {label:<40} {per_1000[name]:7.3f} s / 1000 images, {mem} +{res[name]['peak_mib']:.0f} MiB")
        print(
            f"   ratio reference / ours: {per_1000['reference'] / per_1000['ours']:.1f}x time, "
            f"{res['reference']['peak_mib'] / max(res['ours']['peak_mib'], 1e-9):.1f}x memory; output "
            f"{ours.nbytes / 2**20:.0f} MiB uint8 vs {ref.nbytes / 2**20:.0f} MiB float32"
        )
        diff = np.abs(ours.astype(np.float32) - ref)
        print(f"   pixel agreement: mean |ours - reference| = {diff.mean():.3f} grey levels, max {diff.max():.2f}")
        print(
            f"3. resize backend: Pillow BOX {per_1000['pillow_box']:.3f} s / 1000 images (resize only) "
            f"vs ours {per_1000['ours']:.3f} s (resize + crop): OpenCV "
            f"{per_1000['pillow_box'] / per_1000['ours']:.1f}x faster"
        )


if __name__ == "__main__":
    main()
