"""The one image decoder (issue 11): every Pillow mode scaled to uint8 RGB, compared with a reference.

The reference conversions are written out here independently of ``pipelines.images``: 16-bit
values divide by 257, 8-bit modes go through Pillow's own RGB conversion, grayscale is repeated
over three channels. The same decoder serves ``data import``, ``predict`` and the web page.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import DataError
from pipelines.images import NotAnImageError, decode_image, to_rgb_uint8

RNG = np.random.default_rng(0)
GRAY16 = (RNG.integers(0, 65536, size=(24, 20))).astype(np.uint16)
GRAY8 = RNG.integers(0, 256, size=(24, 20), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)


def _gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2).astype(np.uint8)


def _ref16(values: np.ndarray) -> np.ndarray:
    return _gray(np.rint(values.astype(np.float64) / 257.0))


def _image_16(mode: str) -> Image.Image:
    dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}[mode]
    return Image.frombytes(mode, (20, 24), GRAY16.astype(dtype).tobytes())


#: mode -> (image in that mode, expected uint8 RGB)
CASES = {
    "1": lambda: (Image.fromarray(GRAY8 > 127), _gray(np.where(GRAY8 > 127, 255, 0))),
    "L": lambda: (Image.fromarray(GRAY8, "L"), _gray(GRAY8)),
    "LA": lambda: (Image.fromarray(np.stack([GRAY8, 255 - GRAY8], -1), "LA"), _gray(GRAY8)),
    "P": lambda: (Image.fromarray(RGB8).convert("P"), np.asarray(Image.fromarray(RGB8).convert("P").convert("RGB"))),
    "PA": lambda: (
        Image.fromarray(RGB8).convert("P").convert("PA"),
        np.asarray(Image.fromarray(RGB8).convert("P").convert("RGB")),
    ),
    "RGB": lambda: (Image.fromarray(RGB8), RGB8),
    "RGBA": lambda: (Image.fromarray(np.concatenate([RGB8, GRAY8[..., None]], -1), "RGBA"), RGB8),
    "CMYK": lambda: (
        Image.fromarray(RGB8).convert("CMYK"),
        np.asarray(Image.fromarray(RGB8).convert("CMYK").convert("RGB")),
    ),
    "YCbCr": lambda: (
        Image.fromarray(RGB8).convert("YCbCr"),
        np.asarray(Image.fromarray(RGB8).convert("YCbCr").convert("RGB")),
    ),
    "I;16": lambda: (_image_16("I;16"), _ref16(GRAY16)),
    "I;16L": lambda: (_image_16("I;16L"), _ref16(GRAY16)),
    "I;16B": lambda: (_image_16("I;16B"), _ref16(GRAY16)),
    "I;16N": lambda: (_image_16("I;16N"), _ref16(GRAY16)),
    "I (16-bit values)": lambda: (Image.fromarray(GRAY16.astype(np.int32), "I"), _ref16(GRAY16)),
    "I (8-bit values)": lambda: (Image.fromarray(GRAY8.astype(np.int32), "I"), _gray(GRAY8)),
    "I (negative values)": lambda: (
        Image.fromarray(GRAY8.astype(np.int32) - 1000, "I"),
        _gray(np.rint((GRAY8.astype(float) - GRAY8.min()) * 255 / np.ptp(GRAY8))),
    ),
    "F (0..1)": lambda: (Image.fromarray(GRAY8.astype(np.float32) / 255, "F"), _gray(GRAY8)),
    "F (0..255)": lambda: (Image.fromarray(GRAY8.astype(np.float32), "F"), _gray(GRAY8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_mode_matches_its_reference(case: str) -> None:
    img, expected = CASES[case]()
    got = to_rgb_uint8(img, "x.png")
    assert got.dtype == np.uint8 and got.shape == (24, 20, 3)
    np.testing.assert_array_equal(got, np.asarray(expected, dtype=np.uint8))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    """The issue's case: a 16-bit grayscale PNG came out 98.9% white through PIL's RGB conversion."""
    values = (GRAY8.astype(np.uint16) * 257 // 4).astype(np.uint16)  # a dark 16-bit image, mean ~ 8000
    path = tmp_path / "dark16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = decode_image(path.read_bytes(), "dark16.png")
    np.testing.assert_array_equal(rgb, _ref16(values))
    assert (rgb == 255).mean() < 0.01 and abs(rgb.mean() - values.mean() / 257) < 0.6
    assert (np.asarray(Image.open(path).convert("RGB")) == 255).mean() > 0.9  # what plain Pillow does


def test_non_finite_float_pixels_are_one_line() -> None:
    values = GRAY8.astype(np.float32)
    values[0, 0] = np.nan
    with pytest.raises(NotAnImageError, match=r"^x.tif has NaN or infinite pixel values \(mode F\); "):
        to_rgb_uint8(Image.fromarray(values, "F"), "x.tif")


def test_unknown_mode_is_refused_with_one_line() -> None:
    class Odd:
        mode = "BGR;15"

    with pytest.raises(NotAnImageError, match=r"^odd.bmp has pixel mode BGR;15, which galaxy10 cannot convert"):
        to_rgb_uint8(Odd(), "odd.bmp")  # type: ignore[arg-type]


def test_import_predict_and_the_page_share_the_decoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 16-bit PNG imported with ``data import`` holds the scaled pixels, not white."""
    from experiments.cli import main as cli_main
    from pipelines.reader import Galaxy10File

    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = ["file,label"]
    for i in range(4):
        Image.fromarray((GRAY16 // (i + 2)).astype(np.uint16)).save(folder / f"g{i}.png")
        rows.append(f"g{i}.png,{i % 2}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "g.h5"
    assert (
        cli_main(
            ["data", "import", str(folder), "--labels", str(folder / "labels.csv"), "--size", "20", "--out", str(out)]
        )
        == 0
    ), capsys.readouterr().err
    with Galaxy10File(out) as f:
        images = f.images()
    # 24x20 centre-cropped to 20x20 (no resize): rows 2..21
    expected = _ref16((GRAY16 // 2).astype(np.uint16))[2:22]
    np.testing.assert_array_equal(images[0], expected)


def test_decode_image_reads_files_and_keeps_the_old_errors(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(RGB8).save(buf, format="PNG")
    path = tmp_path / "a.png"
    path.write_bytes(buf.getvalue())
    np.testing.assert_array_equal(decode_image(path), RGB8)
    with pytest.raises(DataError, match=r"is empty \(0 bytes\)"):
        decode_image(b"", "e.png")
    with pytest.raises(NotAnImageError, match=r"^t.png is not a PNG or JPEG image"):
        decode_image(b"hello", "t.png")
