"""Input pipeline throughput feeding the reference CNN, measured in one run.

Three ways of feeding the same compiled CNN (reference architecture, 88 px crop, batch 64, Adam,
float32 unless ``--precision``) for a fixed number of training steps:

1. ``ours``: ``pipelines.inputs.make_train_dataset`` with the ``reference`` albumentations policy
   (rotation 45, independent x/y zoom 0.8-1.2, flips) on the 128 px uint8 images, centre crop 88.
2. ``reference``: the reference project's input path, Keras 2's
   ``ImageDataGenerator(rotation_range=45, zoom_range=0.2, horizontal_flip=True, vertical_flip=True)``
   ``.flow(x, y, batch_size)`` fed to ``model.fit`` with Keras 2's defaults (``workers=1``: one
   background thread fills a 10-batch queue). ImageDataGenerator is gone from Keras 3, so it is
   re-created here with its own semantics: the whole array cast to float32, then per image in a
   Python loop a random rotation and x/y zoom composed about the centre and applied channel by
   channel with ``scipy.ndimage.affine_transform(order=1, mode="nearest")``, then random flips.
   Its output is centre-cropped to 88 px so both feed the same CNN.
3. ``model only``: the same CNN fed pre-made in-memory batches (no augmentation), the ceiling.

Prints images/s of each (median over ``--rounds`` rounds that alternate the three methods) and the
ratio ours / reference; the CPU count and load average are printed because other processes on the
machine skew absolute numbers (the ratio is measured round by round, back to back).

The re-creation is bit-identical to Keras' legacy ``ImageDataGenerator.random_transform`` for the
same random draws (checked against ``keras.src.legacy.preprocessing.image`` while writing it).

Usage: ``python benchmarks/bench_input.py [--steps 30] [--rounds 3] [--warmup 5] [--batch 64] [--n 2048]``
"""

from __future__ import annotations

import argparse
import functools
import os
import queue
import threading
import time
from collections.abc import Iterator

import common  # noqa: F401  (a quiet TensorFlow start, the repository on sys.path)
import numpy as np  # noqa: E402

SIZE, CROP = 128, 88


def galaxy_like_images(n: int, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Elliptical blobs with noise (augmentation cost does not depend on content), uint8, 10 labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    images = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        t = rng.uniform(0, np.pi)
        r = size * rng.uniform(0.06, 0.15)
        q = rng.uniform(0.3, 1.0)
        xr, yr = xx * np.cos(t) + yy * np.sin(t), -xx * np.sin(t) + yy * np.cos(t)
        blob = np.exp(-0.5 * ((xr / r) ** 2 + (yr / (r * q)) ** 2))
        img = blob[..., None] * np.array([200, 180, 150]) + rng.normal(12, 5, (size, size, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels


# ------------------------------------------------------------------------------------------
# Re-creation of Keras 2's ImageDataGenerator(...).flow(x, y) for the reference's arguments
# ------------------------------------------------------------------------------------------
def _offset_center(matrix: np.ndarray, h: int, w: int) -> np.ndarray:
    ox, oy = h / 2 - 0.5, w / 2 - 0.5
    offset = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]])
    reset = np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]])
    return offset @ matrix @ reset


def reference_random_transform(
    x: np.ndarray, rng: np.random.RandomState, rotation_range: float = 45.0, zoom_range: float = 0.2
) -> np.ndarray:
    """One float32 (H, W, C) image through ImageDataGenerator.random_transform + apply_transform."""
    import scipy.ndimage

    theta = np.deg2rad(rng.uniform(-rotation_range, rotation_range))
    zx, zy = rng.uniform(1 - zoom_range, 1 + zoom_range, 2)
    flip_h = rng.random_sample() < 0.5
    flip_v = rng.random_sample() < 0.5
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    h, w = x.shape[:2]
    m = _offset_center(rotation @ zoom, h, w)
    m[:, [0, 1]] = m[:, [1, 0]]  # Keras' x/y <-> row/col swap
    m[[0, 1]] = m[[1, 0]]
    channels = np.rollaxis(x, 2, 0)
    out = np.stack(
        [scipy.ndimage.affine_transform(c, m[:2, :2], m[:2, 2], order=1, mode="nearest", cval=0.0) for c in channels],
        axis=0,
    )
    out = np.rollaxis(out, 0, 3)
    if flip_h:
        out = out[:, ::-1]
    if flip_v:
        out = out[::-1]
    return out


def reference_flow(
    images: np.ndarray, labels: np.ndarray, batch_size: int, crop: int, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """NumpyArrayIterator semantics: float32 copy of x, per-epoch shuffle, per-image Python loop."""
    x = np.asarray(images, dtype=np.float32)  # flow() keeps the whole array as float32
    rng = np.random.RandomState(seed)
    lo = (x.shape[1] - crop) // 2
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            batch = np.zeros((len(idx), *x.shape[1:]), dtype=np.float32)
            for i, j in enumerate(idx):
                batch[i] = reference_random_transform(x[j], rng)
            yield batch[:, lo : lo + crop, lo : lo + crop], labels[idx].astype(np.int32)


def keras2_enqueued(gen: Iterator, max_queue_size: int = 10) -> Iterator:
    """Keras 2 ``fit(generator, workers=1)``: one background thread keeps a 10-batch queue full."""
    q: queue.Queue = queue.Queue(max_queue_size)
    stop = threading.Event()

    def work() -> None:
        for item in gen:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            yield q.get()
    finally:
        stop.set()


# ------------------------------------------------------------------------------------------
def _model(precision: str):
    import keras

    from experiments.settings.run import ModelConfig
    from models import build_model

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(), input_size=CROP, precision=precision)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )
    return model


def _close(feed) -> None:
    """Stop a generator feed's background thread."""
    if hasattr(feed, "close"):
        feed.close()


def _time_fit(model, data, steps: int, batch: int) -> float:
    """Images/s over ``steps`` training steps."""
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per method and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, default=2048, help="images in memory (128 px)")
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"))
    parser.add_argument("--parallel-calls", type=int, default=2, help="our pipeline's parallel batches")
    args = parser.parse_args()

    import tensorflow as tf

    from augment.policies import augment_batch, build_policy
    from pipelines.inputs import make_train_dataset

    images, labels = galaxy_like_images(args.n)
    print(
        f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}, "
        f"TF threads intra={tf.config.threading.get_intra_op_parallelism_threads()}"
    )
    print(
        f"{args.n} images at {SIZE} px -> crop {CROP}, batch {args.batch}, {args.steps} timed steps, "
        f"reference CNN, {args.precision}"
    )

    aug = functools.partial(augment_batch, build_policy("reference"))
    x_fixed = np.ascontiguousarray(images[: args.batch * 4, 20 : 20 + CROP, 20 : 20 + CROP]).astype(np.float32)
    fixed = (
        tf.data.Dataset.from_tensor_slices((x_fixed, labels[: len(x_fixed)].astype(np.int32)))
        .batch(args.batch)
        .cache()
        .repeat()
    )
    # Each timed round starts a fresh feed (empty queues), so no method gets batches made earlier.
    feeds = {
        "model only": lambda r: fixed,
        "ours": lambda r: make_train_dataset(
            images, labels, batch_size=args.batch, crop=CROP, augment_fn=aug, seed=r, parallel_calls=args.parallel_calls
        ).repeat(),
        "reference": lambda r: keras2_enqueued(reference_flow(images, labels, args.batch, CROP, seed=r)),
    }
    models = {name: _model(args.precision) for name in feeds}
    for name, make in feeds.items():  # tracing, untimed
        feed = make(1000)
        models[name].fit(feed, epochs=1, steps_per_epoch=args.warmup, shuffle=False, verbose=0)
        _close(feed)
    # Rounds alternate the methods so that load from other processes hits all of them alike.
    rates: dict[str, list[float]] = {name: [] for name in feeds}
    for r in range(args.rounds):
        for name, make in feeds.items():
            feed = make(r)
            rates[name].append(_time_fit(models[name], feed, args.steps, args.batch))
            _close(feed)
    ratios = [o / r for o, r in zip(rates["ours"], rates["reference"])]

    # Input side alone (no model): how fast each produces augmented batches on its own.
    start = time.perf_counter()
    for _ in feeds["ours"](99).take(args.steps):
        pass
    ours_alone = args.steps * args.batch / (time.perf_counter() - start)
    gen = reference_flow(images, labels, args.batch, CROP, seed=1)
    start = time.perf_counter()
    for _ in range(args.steps):
        next(gen)
    ref_alone = args.steps * args.batch / (time.perf_counter() - start)

    med = {name: float(np.median(v)) for name, v in rates.items()}
    print(f"{'feeding the CNN (median of ' + str(args.rounds) + ')':<34}{'images/s':>10}   rounds")
    for name in feeds:
        print(f"  {name:<32}{med[name]:>10.1f}   {', '.join(f'{v:.0f}' for v in rates[name])}")
    print("input alone (no model)")
    print(f"  {'ours':<32}{ours_alone:>10.1f}")
    print(f"  {'reference':<32}{ref_alone:>10.1f}")
    print(
        f"ratio ours / reference (training, median of per-round ratios): {np.median(ratios):.2f}x "
        f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    print(
        f"ours keeps the CNN at {100 * med['ours'] / med['model only']:.0f}% of its unfed speed, "
        f"reference at {100 * med['reference'] / med['model only']:.0f}%"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
