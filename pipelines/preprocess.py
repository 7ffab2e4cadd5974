"""Image preprocessing: square crop, anti-aliased resize, centre crop, and the resized-array cache.

Training and prediction share one path: a galaxy image of any size is centre-cropped to a square,
resized (anti-aliased) to ``size`` pixels, then centre-cropped to ``crop`` pixels, so a new 424 px
cut-out goes through the same steps as a 256 px Galaxy10 image. Resizing uses OpenCV's
``INTER_AREA`` (pixel-area averaging) for downscaling: about 2x faster than Pillow's ``BOX`` filter
and identical to it within 1 grey level (see ``benchmarks/bench_data.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from core.errors import DataError
from core.files import atomic_path, os_error_reason, reserve_space
from core.paths import default_cache_dir
from pipelines.reader import data_fingerprint, opened, validate_galaxy10

log = logging.getLogger(__name__)

#: Bumped whenever the resize/crop arithmetic changes, so stale caches are never reused.
PREPROCESS_VERSION: int = 1

#: Images read from the HDF5 file per batch while building a cache (256 px: about 50 MB a batch).
CACHE_BATCH_SIZE: int = 256


def _check_rgb_uint8(images: np.ndarray, what: str, ndim: int) -> None:
    """Raise ``DataError`` unless ``images`` is uint8 with ``ndim`` dimensions, the last one 3 (RGB)."""
    if not isinstance(images, np.ndarray) or images.ndim != ndim or images.shape[-1] != 3:
        shape = getattr(images, "shape", None)
        want = "(H, W, 3)" if ndim == 3 else "(N, H, W, 3)"
        raise DataError(f"{what} must be an RGB array of shape {want}, got shape {shape}; convert it to RGB first")
    if images.dtype != np.uint8:
        raise DataError(f"{what} must be uint8 (0..255), got {images.dtype}; convert it to uint8 first")


def _check_size(value: int, name: str) -> int:
    """Return ``value`` as int if it is a positive integer, else raise ``DataError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive integer number of pixels, got {value!r}")
    return int(value)


def _resize_one(image: np.ndarray, size: int) -> np.ndarray:
    """Resize one (H, W, 3) uint8 image to (size, size, 3): area averaging down, bilinear up."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    interpolation = cv2.INTER_AREA if size <= min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interpolation)


def resize_images(images: np.ndarray, size: int = 128) -> np.ndarray:
    """Anti-aliased resize of uint8 ``(N, H, W, 3)`` images to a new uint8 ``(N, size, size, 3)`` array."""
    _check_rgb_uint8(images, "images", ndim=4)
    size = _check_size(size, "size")
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = _resize_one(image, size)
    return out


def _crop_offsets(h: int, w: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """Top-left corner of a centred ``crop_h x crop_w`` window in an ``h x w`` image."""
    return (h - crop_h) // 2, (w - crop_w) // 2


def center_crop(images: np.ndarray, crop: int = 88) -> np.ndarray:
    """Return the centred ``crop x crop`` window of uint8 ``(N, H, W, 3)`` images (a view, no copy).

    Raises
    ------
    DataError
        If ``crop`` is larger than the images.
    """
    _check_rgb_uint8(images, "images", ndim=4)
    crop = _check_size(crop, "crop")
    h, w = images.shape[1:3]
    if crop > min(h, w):
        raise DataError(f"crop {crop} px is larger than the {h}x{w} px images; use a crop <= {min(h, w)}")
    top, left = _crop_offsets(h, w, crop, crop)
    return images[:, top : top + crop, left : left + crop]


def square_crop(image: np.ndarray) -> np.ndarray:
    """Centre-crop one uint8 ``(H, W, 3)`` image to ``(s, s, 3)`` with ``s = min(H, W)`` (a view)."""
    _check_rgb_uint8(image, "image", ndim=3)
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = _crop_offsets(h, w, s, s)
    return image[top : top + s, left : left + s]


def prepare_images(
    images_any_size: np.ndarray | Sequence[np.ndarray], size: int = 128, crop: int | None = 88
) -> np.ndarray:
    """Square-crop, resize to ``size`` and centre-crop to ``crop``: what prediction does to new images.

    Parameters
    ----------
    images_any_size
        One uint8 ``(N, H, W, 3)`` array, or a sequence of uint8 ``(H, W, 3)`` images of any sizes.
    size
        Side after resizing (the training data's resized size).
    crop
        Side of the final centre crop, or None for no crop.

    Returns
    -------
    numpy.ndarray
        uint8 ``(N, crop, crop, 3)`` (or ``(N, size, size, 3)`` when ``crop`` is None).
    """
    size = _check_size(size, "size")
    if crop is not None and _check_size(crop, "crop") > size:
        raise DataError(f"crop {crop} px is larger than the resize size {size} px; use a crop <= {size}")
    if isinstance(images_any_size, np.ndarray) and images_any_size.ndim == 4:
        _check_rgb_uint8(images_any_size, "images", ndim=4)
        images = list(images_any_size)
    else:
        images = list(images_any_size)
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        _check_rgb_uint8(image, f"image {i}", ndim=3)
        out[i] = _resize_one(square_crop(image), size)
    return out if crop is None else np.ascontiguousarray(center_crop(out, crop))


def cache_path_for(fingerprint: str, size: int, crop: int | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the cached resized array for data ``fingerprint`` at ``size`` / ``crop``."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    crop_part = f"c{crop}" if crop is not None else "nocrop"
    return folder / f"resized_{fingerprint[:12]}_s{size}_{crop_part}_v{PREPROCESS_VERSION}.npy"


def _open_cache(path: Path, side: int) -> np.ndarray:
    """Memory-map a cache file, checking header, dtype, shape and byte length; ``ValueError`` if bad."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"unreadable .npy ({err})") from None
    if array.dtype != np.uint8 or array.shape[1:] != (side, side, 3) or array.ndim != 4 or not len(array):
        raise ValueError(f"holds {array.dtype} {array.shape}, expected uint8 (N, {side}, {side}, 3)")
    if path.stat().st_size != array.offset + array.nbytes:
        raise ValueError(f"is {path.stat().st_size} bytes, expected {array.offset + array.nbytes}")
    return array


def _build_cache(data_path: Path, path: Path, size: int, crop: int | None, source: Any = None) -> None:
    """Stream the HDF5 images in batches, resize (and crop) them, and write ``path`` atomically."""

    side = crop if crop is not None else size
    with opened(data_path, source) as f:
        n = f.info.n_images
        try:
            with atomic_path(path, suffix=".npy.tmp") as tmp:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, side, side, 3))
                try:
                    reserve_space(tmp)  # a full disk is an OSError here, not a SIGBUS inside the memmap
                    with tqdm(total=n, desc=f"resize to {size} px", unit="img", disable=None) as bar:
                        for indices, images in f.iter_batches(CACHE_BATCH_SIZE):
                            resized = resize_images(images, size)
                            out[indices] = resized if crop is None else center_crop(resized, crop)
                            bar.update(len(indices))
                    out.flush()
                finally:
                    del out
        except OSError as err:
            raise DataError(
                f"cannot write the image cache {path} ({os_error_reason(err)}); free space in "
                f"{path.parent} or point GALAXY10_CACHE at a folder with room"
            ) from None


def load_resized(
    data_path: str | os.PathLike,
    *,
    size: int = 128,
    crop: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    source: Any = None,
) -> np.ndarray:
    """Return all images of ``data_path`` resized to ``size`` (and centre-cropped to ``crop``), cached.

    The first call streams the HDF5 file and writes a ``.npy`` cache named by the data fingerprint,
    size, crop and :data:`PREPROCESS_VERSION`; later calls memory-map it (read-only) without reading
    the HDF5 images. A corrupt cache is rebuilt with a warning. Labels come from the reader.

    Returns
    -------
    numpy.ndarray
        Read-only uint8 memmap ``(N, side, side, 3)``, ``side = crop or size``, in file order.

    ``source``: the caller's open ``Galaxy10File`` of ``data_path`` (read instead of opening it again).
    """

    size = _check_size(size, "size")
    if crop is not None and _check_size(crop, "crop") > size:
        raise DataError(f"crop {crop} px is larger than the resize size {size} px; use a crop <= {size}")
    data_path = Path(data_path)
    if not data_path.is_file():
        validate_galaxy10(data_path)  # raises the reader's one-line "not found" error
    side = crop if crop is not None else size
    # The fingerprint (the reader caches it by path, size and mtime) ties the cache to the file's
    # content, so a cache hit needs no HDF5 access at all.
    path = cache_path_for(data_fingerprint(data_path), size, crop, cache_dir)
    if path.exists():
        try:
            array = _open_cache(path, side)
        except ValueError as err:
            log.warning("cache %s is corrupt (%s); rebuilding it", path, err)
        else:
            log.debug("using cached resized images %s", path)
            return array
    log.info("resizing the images of %s to %d px (crop %s) into %s", data_path, size, crop, path)
    _build_cache(data_path, path, size, crop, source)
    return _open_cache(path, side)
