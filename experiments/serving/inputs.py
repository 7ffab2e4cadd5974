"""What ``galaxy10 predict`` reads: image files, folders and HDF5 rows, decoded in bounded batches."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DataError
from pipelines.images import DEFAULT_MAX_PIXELS, check_image_header, decode_image
from pipelines.reader import Galaxy10File, validate_galaxy10

HDF5_SIGNATURE: bytes = b"\x89HDF\r\n\x1a\n"
_H5_RANGE = re.compile(r"^(?P<path>.+\.(?:h5|hdf5)):(?P<spec>[0-9,\- ]+)$", re.IGNORECASE)


@dataclass(frozen=True)
class InputImage:
    """One image to classify and the label it is reported under (file name, or ``file.h5[i]``)."""

    label: str
    image: np.ndarray


def parse_index_spec(spec: str, n: int, name: str) -> list[int]:
    """Parse ``0-9,20`` (inclusive ranges) into indices checked against ``n`` images."""
    indices: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise DataError(f"bad index range {part!r} in {name}; use e.g. file.h5:0-9,20")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise DataError(f"empty index range {part!r} in {name}; write low-high, e.g. 0-9")
        if hi >= n:
            raise DataError(f"index {hi} is out of range for {name} ({n} images: 0-{n - 1})")
        indices.extend(range(lo, hi + 1))
    return indices


@dataclass(frozen=True)
class InputSource:
    """One command-line input: a PNG/JPEG file (``indices`` None) or chosen rows of an HDF5 file."""

    path: Path
    indices: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return 1 if self.indices is None else len(self.indices)


def plan_inputs(args: Sequence[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[InputSource]:
    """Check every input cheaply (existence, type, image header, HDF5 schema, index ranges).

    Arguments are PNG/JPEG files, Galaxy10 HDF5 files (all images) or ``file.h5:0-9,20``.
    Pixels are not decoded here, so a bad argument fails before any model is loaded.
    """
    sources = []
    for arg in args:
        range_match = _H5_RANGE.match(arg)
        path, spec = (Path(range_match["path"]), range_match["spec"]) if range_match else (Path(arg), None)
        head, colon, tail = arg.rpartition(":")
        if not range_match and colon and not path.exists() and Path(head).is_file():
            raise DataError(
                f"bad index range {tail!r} in {arg}; use FILE.h5:RANGES with indices and inclusive "
                "ranges, e.g. file.h5:0-9,20"
            )
        if not path.exists():
            raise DataError(f"input {arg} does not exist; check the path")
        if path.is_dir():
            raise DataError(f"input {arg} is a folder; name the image files (e.g. {arg}/*.png)")
        with path.open("rb") as fh:
            head = fh.read(len(HDF5_SIGNATURE))
        if head == HDF5_SIGNATURE:
            n = validate_galaxy10(path).n_images
            indices = parse_index_spec(spec, n, str(path)) if spec else list(range(n))
            sources.append(InputSource(path, tuple(indices)))
        elif spec is not None:
            raise DataError(f"{path} is not an HDF5 file, so {arg} has no image indices")
        else:
            check_image_header(path, max_pixels=max_pixels)
            sources.append(InputSource(path))
    return sources


def iter_input_batches(
    sources: Sequence[InputSource], batch_size: int = 64, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[list[InputImage]]:
    """Read the planned inputs in order, ``batch_size`` images at a time (HDF5 rows read lazily)."""
    batch: list[InputImage] = []
    for source in sources:
        for item in _iter_source(source, batch_size, max_pixels):
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _iter_source(source: InputSource, batch_size: int, max_pixels: int) -> Iterator[InputImage]:
    if source.indices is None:
        yield InputImage(
            str(source.path),
            decode_image(
                source.path.read_bytes(),
                str(source.path),
                max_pixels=max_pixels,
                fix="give PNG/JPEG images or Galaxy10 HDF5 files",
            ),
        )
        return

    with Galaxy10File(source.path) as f:
        for indices, images in f.iter_batches(batch_size, np.asarray(source.indices, dtype=np.int64)):
            for idx, image in zip(indices, images):
                yield InputImage(f"{source.path}[{int(idx)}]", image)
