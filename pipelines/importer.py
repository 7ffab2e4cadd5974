"""Import a folder of PNG/JPEG cutouts plus a labels CSV into a Galaxy10-schema HDF5 file.

Class rule (``classes``):

- ``"galaxy10"``: every label is a Galaxy10 index 0-9, slug or display name
  (:func:`pipelines.classes.class_index`); the file gets the ten Galaxy10 classes.
- ``"custom"``: the labels are a class set of their own; the sorted distinct values become classes
  ``0..K-1`` (integers sorted numerically, otherwise as text), or ``class_names`` names integer
  labels ``0..K-1`` in order.
- ``"auto"`` (default): ``"galaxy10"`` when every label is a Galaxy10 slug or display name
  (text), else ``"custom"``. Bare integers are ambiguous (the ring set's 0/1 are not Galaxy10
  classes), so they import as a custom set unless ``classes="galaxy10"`` is given.

Every image is converted to RGB, centre-cropped to a square and resized to ``size`` with Pillow's
anti-aliased LANCZOS filter. The root attribute ``class_names`` (JSON list) records the classes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from core.errors import DataError
from core.files import atomic_path
from core.outputs import H5_OWNER_ATTR, check_output_file
from pipelines.classes import CLASS_NAMES, class_index
from pipelines.images import MAX_IMAGE_SIDE, to_rgb_uint8
from pipelines.reader import validate_galaxy10

log = logging.getLogger(__name__)

CLASS_MODES: tuple[str, ...] = ("auto", "galaxy10", "custom")
#: Bad files named in the error line before "... and N more".
SHOW_BAD: int = 5
_MAX_CLASSES = 256


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_folder` wrote and what it skipped."""

    out: Path
    n_images: int
    image_size: int
    class_mode: str
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]
    has_coords: bool
    skipped: tuple[tuple[str, str], ...]


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _is_galaxy10_name(text: str) -> bool:
    if _is_int(text):
        return False
    try:
        class_index(text)
    except DataError:
        return False
    return True


def resolve_classes(
    values: Sequence[str], mode: str = "auto", class_names: Sequence[str] | None = None
) -> tuple[str, tuple[str, ...], dict[str, int]]:
    """Decide the class set for label strings; return ``(mode, class_names, value -> index)``.

    Values that map to no class are absent from the mapping (callers report their rows).

    Raises
    ------
    DataError
        On an unknown mode, an unusable ``class_names`` or more than 256 classes.
    """
    if mode not in CLASS_MODES:
        raise DataError(f"unknown class mode {mode!r}; use one of: {', '.join(CLASS_MODES)}")
    distinct = sorted({v for v in values if v})
    if mode == "auto":
        mode = "galaxy10" if distinct and all(_is_galaxy10_name(v) for v in distinct) else "custom"
        if mode == "custom" and class_names is None and all(_is_int(v) and 0 <= int(v) <= 9 for v in distinct):
            log.info(
                "integer labels import as a custom %d-class set; pass --classes galaxy10 if "
                "they are Galaxy10 labels 0-9",
                len(distinct),
            )
    if mode == "galaxy10":
        if class_names is not None:
            raise DataError("class names are fixed for Galaxy10 labels; drop --class-names or use --classes custom")
        mapping = {}
        for v in distinct:
            try:
                mapping[v] = class_index(v)
            except DataError:
                pass
        return mode, CLASS_NAMES, mapping
    if class_names is not None:
        names = tuple(n.strip() for n in class_names)
        if not names or any(not n for n in names) or len(set(names)) != len(names):
            raise DataError(
                f"--class-names {','.join(class_names)!r} must list distinct, non-empty "
                "names, one per integer label 0..K-1"
            )
        not_int = [v for v in distinct if not _is_int(v)]
        if not_int:
            raise DataError(
                f"--class-names names integer labels 0..K-1, but the labels include "
                f"{not_int[0]!r}; drop --class-names to use the label text as names"
            )
        mapping = {v: int(v) for v in distinct if 0 <= int(v) < len(names)}
        return mode, names, mapping
    if all(_is_int(v) for v in distinct):
        distinct = sorted(distinct, key=int)
        names = tuple(str(int(v)) for v in distinct)
    else:
        names = tuple(distinct)
    if len(names) > _MAX_CLASSES:
        raise DataError(
            f"the labels name {len(names)} distinct classes, more than {_MAX_CLASSES}; "
            "check --label-column points at a class column"
        )
    return mode, names, {v: i for i, v in enumerate(distinct)}


def load_image(path: Path, size: int) -> np.ndarray:
    """Read an image file as RGB, centre-crop it to a square and resize it to ``size`` (LANCZOS).

    Pixels of any mode are scaled to 8-bit RGB by :func:`pipelines.images.to_rgb_uint8`.

    Raises
    ------
    OSError, ValueError, DataError
        If Pillow cannot decode the file or convert its pixels (callers report it with the file name).
    """
    with Image.open(path) as im:
        im.load()
        rgb = Image.fromarray(to_rgb_uint8(im, path.name))
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    if side != size:
        square = square.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.uint8)


def _read_catalog(labels_csv: Path, file_column: str, label_column: str) -> pd.DataFrame:
    if not labels_csv.is_file():
        raise DataError(
            f"labels CSV {labels_csv} not found; pass a CSV with a file column and a label column (--labels)"
        )
    try:
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(
            f"{labels_csv} is not a readable CSV ({str(err).splitlines()[0]}); save it "
            "as comma-separated text with a header row"
        ) from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in (file_column, label_column) if c not in table.columns]
    if missing:
        raise DataError(
            f"{labels_csv} has no column {', '.join(repr(c) for c in missing)} (columns: "
            f"{', '.join(table.columns)}); name the right ones with --file-column/--label-column"
        )
    if table.empty:
        raise DataError(f"{labels_csv} has a header but no rows; add one row per image")
    return table


def _coord_columns(table: pd.DataFrame) -> tuple[str, str] | None:
    lower = {c.lower(): c for c in table.columns}
    if "ra" in lower and "dec" in lower:
        return lower["ra"], lower["dec"]
    return None


def _path_in_folder(folder: Path, name: str) -> Path | None:
    """The file a CSV names, relative to ``folder`` or absolute, if it lies inside ``folder``; else None.

    ``../../etc/passwd``, absolute paths elsewhere and links that lead out of the folder give None;
    an absolute path that points inside the folder is accepted.
    """
    candidate = Path(name.replace("\\", "/"))
    full = candidate if candidate.is_absolute() else folder / candidate
    root = folder.resolve()
    resolved = full.resolve()
    return resolved if resolved == root or root in resolved.parents else None


def _bad_line(bad: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{f}: {why}" for f, why in bad[:SHOW_BAD])
    more = f"; ... and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else ""
    return f"{shown}{more}"


def import_folder(
    folder: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int = 256,
    skip_bad: bool = False,
    file_column: str = "file",
    label_column: str = "label",
    classes: str = "auto",
    class_names: Sequence[str] | None = None,
    progress: bool = True,
    force: bool = False,
) -> ImportReport:
    """Import images listed in ``labels_csv`` (paths relative to ``folder``) into HDF5 at ``out``.

    Bad rows (missing or unreadable images, unknown classes, bad coordinates) stop the import with
    one error line naming the first few files and the count, and nothing is written; with
    ``skip_bad`` they are skipped and logged. The output is validated before it is moved into place.
    An existing ``out`` is replaced only if galaxy10 wrote it, or with ``force``.

    Raises
    ------
    DataError
        For a missing folder or CSV, missing columns, bad rows (without ``skip_bad``) or an empty
        result.
    """
    folder, labels_csv, out = Path(folder), Path(labels_csv), Path(out)
    if not 8 <= size <= MAX_IMAGE_SIDE:
        raise DataError(f"--size {size} is out of range; use 8-{MAX_IMAGE_SIDE} pixels (Galaxy10 uses 256)")
    if not folder.is_dir():
        raise DataError(
            f"image folder {folder} not found or not a folder; pass the folder that holds the images named in the CSV"
        )
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; pass a file name such as data/my_set.h5")
    check_output_file(out, force=force)
    table = _read_catalog(labels_csv, file_column, label_column)
    files = table[file_column].str.strip().tolist()
    labels_text = table[label_column].str.strip().tolist()
    mode, names, mapping = resolve_classes(labels_text, classes, class_names)
    coord_cols = _coord_columns(table)

    bad: list[tuple[str, str]] = []
    rows: list[tuple[str, Path, int, float, float]] = []
    for i, (name, lab) in enumerate(zip(files, labels_text)):
        tag = name or f"row {i + 2}"
        if not name:
            bad.append((tag, "empty file name"))
        elif not lab:
            bad.append((tag, "empty label"))
        elif lab not in mapping:
            bad.append((tag, f"unknown class {lab!r}"))
        elif (path := _path_in_folder(folder, name)) is None:
            bad.append((tag, "path leads outside the image folder; list files relative to it"))
        elif not path.is_file():
            bad.append((tag, "file not found"))
        else:
            ra = dec = float("nan")
            if coord_cols:
                try:
                    ra, dec = float(table.at[i, coord_cols[0]]), float(table.at[i, coord_cols[1]])
                except ValueError:
                    bad.append(
                        (tag, f"non-numeric ra/dec {table.at[i, coord_cols[0]]!r}, {table.at[i, coord_cols[1]]!r}")
                    )
                    continue
            rows.append((name, path, mapping[lab], ra, dec))

    labels_out: list[int] = []
    coords_out: list[tuple[float, float]] = []
    with atomic_path(out, suffix=".h5.tmp") as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset(
                "images",
                shape=(len(rows), size, size, 3),
                dtype=np.uint8,
                maxshape=(None, size, size, 3),
                chunks=(1, size, size, 3),
            )
            n = 0
            for name, path, lab, ra, dec in tqdm(
                rows, desc=f"import {folder.name}", unit="img", disable=not progress or None
            ):
                try:
                    image = load_image(path, size)
                except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError, DataError) as err:
                    bad.append(
                        (
                            name,
                            f"unreadable image ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else 'no detail'})",
                        )
                    )
                    continue
                if bad and not skip_bad:
                    continue  # keep checking the rest so the error counts every bad file
                ds[n] = image
                labels_out.append(lab)
                coords_out.append((ra, dec))
                n += 1
            if bad and not skip_bad:
                raise DataError(
                    f"{len(bad)} of {len(files)} rows in {labels_csv} are unusable ({_bad_line(bad)}); "
                    "fix or remove them, or pass --skip-bad to import the rest"
                )
            if n == 0:
                raise DataError(f"no usable images in {folder} ({len(bad)} bad: {_bad_line(bad)}); nothing was written")
            ds.resize(n, axis=0)
            f.create_dataset("ans", data=np.asarray(labels_out, dtype=np.uint8))
            if coord_cols:
                arr = np.asarray(coords_out, dtype=np.float64)
                f.create_dataset("ra", data=arr[:, 0])
                f.create_dataset("dec", data=arr[:, 1])
            f.attrs.update(
                {
                    "synthetic": False,
                    "source": "import",
                    "class_names": json.dumps(list(names)),
                    "class_mode": mode,
                    "source_folder": str(folder.resolve()),
                    "labels_csv": str(labels_csv.resolve()),
                    "label_column": label_column,
                    "created_by": "galaxy10 data import",
                    H5_OWNER_ATTR: "galaxy10 data import",
                    "n_skipped": len(bad),
                }
            )
        info = validate_galaxy10(tmp)
    if bad:
        log.warning("skipped %d of %d rows: %s", len(bad), len(files), _bad_line(bad))
    log.info("imported %d images (%s classes: %s) into %s", n, mode, ", ".join(names), out)
    return ImportReport(
        out=out,
        n_images=n,
        image_size=size,
        class_mode=mode,
        class_names=names,
        class_counts=info.class_counts,
        has_coords=coord_cols is not None,
        skipped=tuple(bad),
    )
