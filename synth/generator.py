"""The synthetic Galaxy10-like data set: GalSim renders in parallel, written with the real schema.

The real ``Galaxy10_DECals.h5`` (2.7 GB) is brought by hand; everywhere else the platform runs on
this file. Images are rendered by :mod:`synth.render` from ranges in
:mod:`synth.params`; class proportions follow Galaxy10 DECaLS. Output depends only on
``seed`` (and ``n``, ``size``, ``difficulty``), never on the number of worker processes: every
image has its own seed spawned from ``numpy.random.SeedSequence(seed)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import cv2
import galsim
import h5py
import numpy as np
from tqdm.auto import tqdm

from core.errors import ConfigError, DataError
from core.files import atomic_path, os_error_reason
from core.outputs import H5_OWNER_ATTR, check_output_file
from pipelines.classes import CLASS_NAMES, GALAXY10_COUNTS
from pipelines.images import MAX_IMAGE_SIDE
from synth.params import check_difficulty, class_counts, parameters_record
from synth.render import render_image
from synth.shapes import pixel_scale

log = logging.getLogger(__name__)

#: Images in the default synthetic set (``make demo``).
DEFAULT_N: int = 4000
#: Bumped whenever a change alters the pixels rendered for a given seed.
GENERATOR_VERSION: str = "1.1"
GENERATOR: str = "galaxy10-platform synthetic (GalSim)"
MIN_N: int = 10
MIN_SIZE: int = 32
#: Most images one file may hold: the per-image seeds alone take ~1 KiB of memory each, and rendering
#: runs at ~10-50 images/s per core (Galaxy Zoo DECaLS, the largest labelled set, has ~314,000).
MAX_N: int = 1_000_000
#: Most worker processes (each holds GalSim and a chunk of images).
MAX_WORKERS: int = 256
#: Stored bytes per raw pixel byte with gzip level 1 (measured: 147 of 192 KiB per 256 px image).
COMPRESSED_FRACTION: float = 0.77
#: Images per task sent to a worker process.
CHUNK: int = 16
#: HDF5 compression of ``images``: gzip like the real file. Measured on 256 px renders: level 1
#: stores 147 KiB/image (raw 192) for 4.5 ms CPU/image, level 4 144 KiB for 5.9 ms; lzf saves
#: only 1.5% on these sky-noise-dominated pixels (2.3 ms).
COMPRESSION: str = "gzip"
COMPRESSION_LEVEL: int = 1


def check_request(
    n: int, size: int, difficulty: float, workers: int | None, out: str | os.PathLike, *, force: bool = False
) -> Path:
    """Validate the arguments of :func:`render_dataset`; return the output path.

    Raises
    ------
    ConfigError
        For ``n``, ``size``, ``difficulty`` or ``workers`` out of range, or an existing ``out`` that
        galaxy10 did not write (unless ``force``).
    DataError
        When ``out`` is a folder, its folder cannot be written or its disk cannot hold the file.
    """
    if not MIN_N <= int(n) <= MAX_N:
        raise ConfigError(f"--n {n} is out of range; render {MIN_N}-{MAX_N:,} images (e.g. --n {DEFAULT_N})")
    if not MIN_SIZE <= int(size) <= MAX_IMAGE_SIDE:
        raise ConfigError(
            f"--size {size} is out of range; use {MIN_SIZE}-{MAX_IMAGE_SIDE} px (Galaxy10 images are 256)"
        )
    check_difficulty(difficulty)
    if workers is not None and not 1 <= int(workers) <= MAX_WORKERS:
        raise ConfigError(f"--workers {workers} is out of range; use 1-{MAX_WORKERS}, or omit it to use every CPU core")
    path = Path(out)
    if path.is_dir():
        raise DataError(f"--out {path} is a folder; give a file name such as {path / 'galaxy10_synthetic.h5'}")
    folder = path.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"cannot write {path}: folder {existing} is not writable; choose another --out")
    check_output_file(path, force=force)
    need = int(n) * int(size) ** 2 * 3 * COMPRESSED_FRACTION
    free = shutil.disk_usage(existing).free
    if need > free:
        raise DataError(
            f"--n {n} images of {size} px need about {_human_bytes(need)} but {existing} has "
            f"{_human_bytes(free)} free; render fewer or smaller images, or choose another --out"
        )
    return path


def _human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def synthetic_labels(n: int, seed: int) -> np.ndarray:
    """Shuffled uint8 labels with Galaxy10 DECaLS proportions (largest-remainder counts)."""
    counts = class_counts(n, GALAXY10_COUNTS)
    labels = np.repeat(np.arange(len(counts), dtype=np.uint8), counts)
    np.random.default_rng(np.random.SeedSequence([seed, 1])).shuffle(labels)
    return labels


def sky_positions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique random (ra, dec) in degrees, uniform on the sphere within the DECaLS dec range."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    lo, hi = np.sin(np.radians(-20.0)), np.sin(np.radians(35.0))
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(lo, hi, n)))
    while True:  # exact duplicates are astronomically unlikely, but the promise is "unique"
        _, first = np.unique(np.stack([ra, dec], axis=1), axis=0, return_index=True)
        dup = np.setdiff1d(np.arange(n), first)
        if dup.size == 0:
            return ra, dec
        ra[dup] = rng.uniform(0.0, 360.0, dup.size)


def image_seeds(n: int, seed: int) -> list[np.random.SeedSequence]:
    """One independent seed per image, the same whatever the chunking or worker count."""
    return np.random.SeedSequence([seed, 0]).spawn(n)


def _render_chunk(
    start: int, labels: np.ndarray, seeds: list[np.random.SeedSequence], size: int, difficulty: float
) -> tuple[int, np.ndarray, np.ndarray]:
    images = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    redshift = np.empty(len(labels), dtype=np.float32)
    for i, (label, s) in enumerate(zip(labels, seeds)):
        images[i], redshift[i] = render_image(int(label), s, size, difficulty)
    return start, images, redshift


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _chunks(labels: np.ndarray, seeds: list, size: int, difficulty: float) -> Iterator[tuple]:
    for a in range(0, len(labels), CHUNK):
        yield a, labels[a : a + CHUNK], seeds[a : a + CHUNK], size, difficulty


def _render_parallel(tasks: Iterator[tuple], workers: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield rendered chunks as they finish, keeping at most ``2 * workers`` chunks in flight."""
    # spawn, not fork: the caller may have TensorFlow (and its threads) loaded already
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        pending: set[Future] = set()
        try:
            for task in tasks:
                pending.add(pool.submit(_render_chunk, *task))
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        yield fut.result()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def _file_attrs(n: int, size: int, seed: int, difficulty: float) -> dict:
    return {
        "synthetic": True,
        H5_OWNER_ATTR: "galaxy10 data synth",
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "galsim_version": galsim.__version__,
        "seed": int(seed),
        "difficulty": float(difficulty),
        "n": int(n),
        "size": int(size),
        "class_names": json.dumps(list(CLASS_NAMES)),
        "parameters": json.dumps(parameters_record(difficulty), sort_keys=True),
    }


def _write_h5(
    tmp: Path,
    results: Iterator[tuple[int, np.ndarray, np.ndarray]],
    *,
    labels: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    attrs: dict,
    size: int,
    progress: bool,
) -> None:
    """Write the rendered blocks and the catalogue columns into the new HDF5 file ``tmp``."""
    n = len(labels)
    f = h5py.File(tmp, "w")
    try:
        images = f.create_dataset(
            "images",
            shape=(n, size, size, 3),
            dtype=np.uint8,
            chunks=(1, size, size, 3),
            compression=COMPRESSION,
            compression_opts=COMPRESSION_LEVEL,
        )
        redshift = np.empty(n, dtype=np.float32)
        with tqdm(total=n, unit="img", desc="synth", disable=None if progress else True) as bar:
            for start, block, z in results:
                images[start : start + len(block)] = block
                redshift[start : start + len(block)] = z
                bar.update(len(block))
        f.create_dataset("ans", data=labels)
        f.create_dataset("ra", data=ra)
        f.create_dataset("dec", data=dec)
        f.create_dataset("redshift", data=redshift)
        f.create_dataset("pxscale", data=np.full(n, pixel_scale(size), dtype=np.float32))
        f.attrs.update(attrs)
        f.close()
    except BaseException:
        _discard_h5(f, tmp)
        raise


def _discard_h5(f: h5py.File, tmp: Path) -> None:
    """Close an HDF5 file that is being thrown away after a failed write, without crashing.

    With HDF5 1.14 / h5py 3.14, once a write failed for lack of space the close fails too (the
    metadata cannot be flushed) and freeing the half-closed file segfaults the interpreter. The
    file is discarded anyway, so it is truncated first: then HDF5 has room to flush and closes.
    """
    with contextlib.suppress(OSError):
        os.truncate(tmp, 0)
    for _ in range(2):
        try:
            f.close()
            return
        except (OSError, RuntimeError, ValueError):
            continue


def render_dataset(
    out: str | os.PathLike,
    *,
    n: int,
    size: int = 256,
    seed: int = 0,
    difficulty: float = 0.5,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Render ``n`` synthetic Galaxy10-like images into the HDF5 file ``out``; return its path.

    Parameters
    ----------
    out
        Output ``.h5`` path, written atomically (nothing is left behind on failure or Ctrl-C).
    n, size
        Number of images and their side in pixels (the field of view is that of a 256 px cutout
        at 0.262 arcsec/px whatever the size).
    seed
        Everything random derives from it; the file is identical for any ``workers``.
    difficulty
        In [0, 1]: widens the overlaps between confusable classes and adds noise.
    workers
        Worker processes (default: ``os.cpu_count()``); 1 renders in this process. Workers are
        started with ``spawn`` (safe when TensorFlow is loaded), so a script calling this with
        ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
    progress
        Show a tqdm bar (on a terminal only).
    force
        Replace an existing ``out`` that galaxy10 did not write.
    """
    path = check_request(n, size, difficulty, workers, out, force=force)
    n, size, seed, difficulty = int(n), int(size), int(seed), check_difficulty(difficulty)
    workers = min(int(workers or os.cpu_count() or 1), max(1, -(-n // CHUNK)))
    labels = synthetic_labels(n, seed)
    seeds = image_seeds(n, seed)
    ra, dec = sky_positions(n, seed)
    log.info(
        "rendering %d synthetic images of %d px (seed %d, difficulty %.2f) on %d process(es)",
        n,
        size,
        seed,
        difficulty,
        workers,
    )
    tasks = _chunks(labels, seeds, size, difficulty)
    results = (_render_chunk(*t) for t in tasks) if workers == 1 else _render_parallel(tasks, workers)
    try:
        with atomic_path(path, suffix=".h5.tmp") as tmp:
            _write_h5(
                tmp,
                results,
                labels=labels,
                ra=ra,
                dec=dec,
                attrs=_file_attrs(n, size, seed, difficulty),
                size=size,
                progress=progress,
            )
    except OSError as err:
        raise DataError(
            f"cannot write {path} ({os_error_reason(err)}); check the free space and permissions "
            f"of {path.parent.resolve()} or choose another --out"
        ) from None
    finally:
        results.close()  # stops the worker pool at once if writing failed
    log.info("wrote %s", path)
    return path
