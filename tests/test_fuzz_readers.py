"""Fuzz the image and HDF5 readers: random and mutated files only ever raise ``DataError``.

Hypothesis feeds random bytes and mutated valid PNG / JPEG / Galaxy10 HDF5 files to the readers that
take user files (``experiments.serving.inputs`` and ``check_image_header`` for prediction and the
web page, ``pipelines.reader.validate_galaxy10`` and ``Galaxy10File`` for every data command). Each
must either succeed (and then return well-formed data) or raise :class:`core.errors.DataError`:
no other exception type, no crash, no hang. A hard watchdog (``faulthandler``) ends the run with a
traceback if one example hangs. The example budget is small and fixed, so the run is bounded.
"""

from __future__ import annotations

import faulthandler
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import write_galaxy10_h5
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.errors import DataError
from pipelines.images import check_image_header, decode_image
from pipelines.reader import Galaxy10File, validate_galaxy10

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: One example that takes longer than this is a hang: dump every thread's stack and exit.
WATCHDOG_S = 120
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _image_bytes(fmt: str, size: int = 24) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


VALID_PNG = _image_bytes("PNG")
VALID_JPEG = _image_bytes("JPEG")


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """``valid`` with some bytes overwritten, a slice deleted or inserted, and/or cut short."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(valid)
        for pos, value in draw(
            st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), min_size=0, max_size=12)
        ):
            data[pos % len(data)] = value
        edit = draw(st.sampled_from(["none", "delete", "insert", "truncate"]))
        if edit == "delete" and len(data) > 2:
            a = draw(st.integers(0, len(data) - 2))
            del data[a : a + draw(st.integers(1, 64))]
        elif edit == "insert":
            a = draw(st.integers(0, len(data)))
            data[a:a] = draw(st.binary(min_size=1, max_size=64))
        elif edit == "truncate":
            data = data[: draw(st.integers(0, len(data) - 1))]
        return bytes(data)

    return build()


def _check_decoded(image: np.ndarray) -> None:
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 0 and image.shape[1] > 0


# --------------------------------------------------------------------------------------------------
# Images (predict, the web page)


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), mutated(VALID_PNG), mutated(VALID_JPEG)))
def test_decode_image_only_raises_data_error(data: bytes) -> None:
    try:
        image = decode_image(data, "upload.png", max_pixels=1_000_000)
    except DataError as err:
        assert str(err) and "\n" not in str(err)
    else:
        _check_decoded(image)


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), mutated(VALID_PNG), mutated(VALID_JPEG)))
def test_image_file_header_check_only_raises_data_error(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "input.png"
    path.write_bytes(data)
    try:
        check_image_header(path, max_pixels=1_000_000)
    except DataError as err:
        assert str(err) and "\n" not in str(err)


def test_the_mutations_do_reach_both_outcomes() -> None:
    """The image fuzzing is not vacuous: valid input decodes, and some mutations are refused."""
    _check_decoded(decode_image(VALID_PNG, "ok.png"))
    _check_decoded(decode_image(VALID_JPEG, "ok.jpg"))
    with pytest.raises(DataError):
        decode_image(VALID_PNG[:40], "cut.png")


# --------------------------------------------------------------------------------------------------
# HDF5 (every data command)


@pytest.fixture(scope="module")
def valid_h5(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A tiny valid Galaxy10 file (12 images of 8 px, coordinates) as bytes."""
    path = write_galaxy10_h5(tmp_path_factory.mktemp("fuzz") / "valid.h5", n=12, size=8)
    return path.read_bytes()


def _read_everything(path: Path) -> None:
    """What the data commands do with a file: validate, then read labels, images and coordinates."""
    info = validate_galaxy10(path)
    with Galaxy10File(path) as f:
        labels = f.labels()
        images = f.images()
        assert images.shape == (info.n_images, info.image_size, info.image_size, 3)
        assert labels.shape == (info.n_images,) and int(labels.max()) < info.num_classes
        picked = f.images([info.n_images - 1, 0])
        assert picked.shape[0] == 2
        for _, batch in f.iter_batches(5):
            assert batch.dtype == np.uint8
        f.coords()


def _fuzz_h5(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.h5"
    path.write_bytes(data)
    try:
        _read_everything(path)
    except DataError as err:
        assert str(err) and "\n" not in str(err)


@FUZZ
@given(data=st.one_of(st.binary(max_size=4096), st.binary(max_size=4096).map(lambda b: HDF5_SIGNATURE + b)))
def test_random_bytes_as_hdf5_only_raise_data_error(data: bytes, tmp_path: Path) -> None:
    _fuzz_h5(data, tmp_path)


@FUZZ
@given(st.data())
def test_mutated_galaxy10_files_only_raise_data_error(valid_h5: bytes, tmp_path: Path, data: st.DataObject) -> None:
    _fuzz_h5(data.draw(mutated(valid_h5)), tmp_path)


def test_valid_h5_reads_and_its_truncation_is_refused(valid_h5: bytes, tmp_path: Path) -> None:
    """The HDF5 fuzzing starts from a file that reads, and the reader does refuse a damaged one."""
    path = tmp_path / "ok.h5"
    path.write_bytes(valid_h5)
    _read_everything(path)
    path.write_bytes(valid_h5[: len(valid_h5) // 3])
    with pytest.raises(DataError, match="truncated"):
        _read_everything(path)
