"""Test-time augmentation over the dihedral group D4: 4 rotations by 90 degrees, each with or without a flip.

Galaxy morphology does not depend on orientation or handedness on the sky, so averaging a model's
class probabilities over the 8 exact (interpolation-free) views removes orientation noise.
View ``j`` is ``rot90(flip(x) if j >= 4 else x, j % 4)`` on the image axes (1, 2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from core.errors import DataError, ModelError

log = logging.getLogger(__name__)

N_VIEWS: int = 8


def _check_images(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] != arr.shape[2]:
        raise DataError(
            f"test-time augmentation needs square images (N, H, H, C), got shape {arr.shape}; "
            "crop the images square first"
        )
    return arr


def dihedral_view(images: np.ndarray, j: int) -> np.ndarray:
    """Return view ``j`` (0..7) of an (N, H, H, C) batch: ``j % 4`` quarter turns, mirrored if ``j >= 4``."""
    if not 0 <= j < N_VIEWS:
        raise ValueError(f"dihedral view index {j} is outside 0..{N_VIEWS - 1}")
    arr = images[:, :, ::-1] if j >= 4 else images
    return np.ascontiguousarray(np.rot90(arr, k=j % 4, axes=(1, 2)))


def inverse_dihedral_view(views: np.ndarray, j: int) -> np.ndarray:
    """Undo :func:`dihedral_view` ``j``: ``inverse_dihedral_view(dihedral_view(x, j), j) == x``."""
    if not 0 <= j < N_VIEWS:
        raise ValueError(f"dihedral view index {j} is outside 0..{N_VIEWS - 1}")
    arr = np.rot90(views, k=-(j % 4), axes=(1, 2))
    return np.ascontiguousarray(arr[:, :, ::-1] if j >= 4 else arr)


def dihedral_views(images: np.ndarray) -> list[np.ndarray]:
    """Return the 8 D4 views of an (N, H, H, C) batch (view 0 is the batch itself)."""
    arr = _check_images(images)
    return [dihedral_view(arr, j) for j in range(N_VIEWS)]


def tta_views(
    predict_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *, batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """``predict_fn``'s (n, C) probabilities for each of the 8 D4 views: float32 ``(8, N, C)``.

    ``predict_fn`` gets at most ``batch_size`` images at a time (one view of one batch), so memory
    stays at one batch of images (plus the ``8 x N x C`` probabilities).
    """
    arr = _check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if len(arr) == 0:
        raise DataError("tta_predict got no images; pass at least one")
    chunks = []
    starts = range(0, len(arr), int(batch_size))
    for start in tqdm(starts, desc="TTA", unit="batch", disable=not progress):
        batch = arr[start : start + batch_size]
        views = []
        for j in range(N_VIEWS):
            probs = np.asarray(predict_fn(dihedral_view(batch, j)))
            if probs.ndim != 2 or probs.shape[0] != len(batch) or (views and probs.shape != views[0].shape):
                raise ModelError(
                    f"predict_fn returned shape {probs.shape} for {len(batch)} images; it must return "
                    "(n_images, n_classes) probabilities"
                )
            views.append(probs.astype(np.float32))
        chunks.append(np.stack(views))
    return np.concatenate(chunks, axis=1)


def mean_of_views(views: np.ndarray) -> np.ndarray:
    """The mean over the first axis of ``(V, N, C)`` view probabilities, summed in float64 view by view."""
    total = np.zeros(views.shape[1:], dtype=np.float64)
    for view in views:
        total += view
    return (total / len(views)).astype(np.float32)


def tta_predict(
    predict_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *, batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """Average ``predict_fn``'s (n, C) probabilities over the 8 D4 views of each image.

    ``predict_fn`` gets at most ``batch_size`` images at a time (one view of one batch), so memory
    stays at one batch. Returns float32 (N, C).
    """
    return mean_of_views(tta_views(predict_fn, images, batch_size=batch_size, progress=progress))
