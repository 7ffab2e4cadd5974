"""The platform's one image decoder: bytes or files in, uint8 RGB ``(H, W, 3)`` out.

Every pixel mode Pillow opens is brought to 8-bit RGB by scaling, not clipping: 16-bit modes
(``I;16`` and its byte orders) divide by 257 (65535 -> 255), 32-bit integer (``I``) and float
(``F``) images are scaled by the range their values occupy (see :func:`scale_to_uint8`), bilevel,
grayscale and palette images are expanded, alpha is dropped, CMYK / YCbCr / HSV / LAB go through
Pillow's colour conversion. A mode that cannot be converted is refused with one line. ``data
import``, ``predict`` and the web page all decode through :func:`decode_image` / :func:`to_rgb_uint8`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import DataError

#: Image formats accepted from users by ``predict`` and the web page (Pillow format names).
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG")
#: Largest side, in pixels, of images the platform writes (``data import --size``, ``data synth --size``).
MAX_IMAGE_SIDE: int = 2048
#: Largest image (width x height) decoded; bigger files are treated as decompression bombs.
DEFAULT_MAX_PIXELS: int = 25_000_000
#: Modes Pillow converts to RGB correctly itself (alpha dropped, palettes expanded, colour spaces converted).
_PIL_CONVERTS = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV", "LAB"}
)


class EmptyImageError(DataError):
    """A zero-byte file or upload."""


class NotAnImageError(DataError):
    """Bytes that are not an image of an accepted format, or pixels that cannot be converted."""


class ImageTooLargeError(DataError):
    """An image whose pixel count exceeds the decoding limit (decompression bomb guard)."""


def scale_to_uint8(values: np.ndarray, mode: str, name: str) -> np.ndarray:
    """One band of a high-bit-depth image scaled to uint8.

    ``I;16*``: ``round(v / 257)``. ``I`` and ``F``: values within 0..1 (``F`` only) are multiplied
    by 255, within 0..255 kept, within 0..65535 divided by 257; any other range (negative or larger
    values) is stretched linearly from its minimum to its maximum.

    Raises
    ------
    NotAnImageError
        For NaN or infinite pixels.
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise NotAnImageError(
            f"{name} has NaN or infinite pixel values (mode {mode}); save it with finite "
            "values, e.g. as an 8- or 16-bit PNG"
        )
    if mode.startswith("I;16"):
        scaled = v / 257.0
    else:
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = v * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = v
        elif lo >= 0.0 and hi <= 65535.0:
            scaled = v / 257.0
        else:
            scaled = (v - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb_uint8(img: Image.Image, name: str) -> np.ndarray:
    """The pixels of an opened Pillow image as uint8 RGB ``(H, W, 3)`` (see the module docstring).

    Raises
    ------
    NotAnImageError
        For a pixel mode that cannot be converted, or non-finite values.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = scale_to_uint8(np.asarray(img), mode, name)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in _PIL_CONVERTS:
        source = img.convert("LA") if mode == "La" else img  # premultiplied alpha: Pillow has no La -> RGB
        return np.asarray(source.convert("RGB"), dtype=np.uint8)
    raise NotAnImageError(
        f"{name} has pixel mode {mode}, which galaxy10 cannot convert to RGB; save it as an "
        "8- or 16-bit grayscale or RGB PNG"
    )


def _open_checked(
    source: io.BytesIO | Path, name: str, formats: Sequence[str] | None, max_pixels: int, fix: str
) -> Image.Image:
    try:
        img = Image.open(source, formats=list(formats) if formats else None)
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"{name} is a decompression bomb ({err}); give a smaller image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        kinds = " or ".join(formats) if formats else "readable"
        raise NotAnImageError(f"{name} is not a {kinds} image; {fix}") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageTooLargeError(
            f"{name} is {width}x{height} pixels, over the {max_pixels:,}-pixel limit; "
            "give a smaller image (Galaxy10 images are 256x256)"
        )
    return img


def decode_image(
    data: bytes | str | os.PathLike,
    name: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] | None = IMAGE_FORMATS,
    fix: str = "give a PNG or JPEG image",
) -> np.ndarray:
    """Decode image bytes (or a file) to uint8 RGB ``(H, W, 3)``.

    ``formats`` limits the accepted Pillow formats (None: any Pillow can read).

    Raises
    ------
    EmptyImageError, NotAnImageError, ImageTooLargeError
        For zero bytes, non-images, damaged or unconvertible images and images over ``max_pixels``
        (decompression bombs).
    """
    if isinstance(data, (bytes, bytearray)):
        label = name or "image"
        payload = bytes(data)
    else:
        label = name or str(data)
        try:
            payload = Path(data).read_bytes()
        except OSError as err:
            raise NotAnImageError(f"{label} cannot be read ({err.strerror or err}); {fix}") from None
    if not payload:
        raise EmptyImageError(f"{label} is empty (0 bytes); {fix}")
    img = _open_checked(io.BytesIO(payload), label, formats, max_pixels, fix)
    try:
        with img:
            img.load()
            rgb = to_rgb_uint8(img, label)
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"{label} is a decompression bomb ({err}); give a smaller image") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt image data
        raise NotAnImageError(f"{label} is a damaged image ({err}); give an intact image file") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise NotAnImageError(f"{label} decodes to an empty image; {fix}")
    return rgb


def check_image_header(
    path: Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] | None = IMAGE_FORMATS,
    fix: str = "give PNG/JPEG images or Galaxy10 HDF5 files",
) -> None:
    """Raise the :func:`decode_image` errors that the file header alone reveals (no pixels decoded)."""
    if path.stat().st_size == 0:
        raise EmptyImageError(f"{path} is empty (0 bytes); {fix}")
    _open_checked(path, str(path), formats, max_pixels, fix).close()
