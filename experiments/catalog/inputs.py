"""What ``galaxy10 catalog`` reads: HDF5 files, folders of images, CSV/Parquet lists of image paths.

The inputs become *segments* of rows in a fixed order (the order of the arguments; a folder's files in
name order, then its subfolders in name order; a list's rows in its order). Rows are addressed by their
global number, so a chunk of rows is the same for any number of workers and after any restart. Nothing is
decoded here: planning checks existence, types and schemas only, and an image that cannot be read later
becomes a row with an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import DataError
from pipelines.reader import Galaxy10File, validate_galaxy10

HDF5_SIGNATURE: bytes = b"\x89HDF\r\n\x1a\n"
#: Image files a folder input contributes (case-insensitive suffixes).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
#: Columns a CSV/Parquet list may name the image path by (the first present is used).
PATH_COLUMNS: tuple[str, ...] = ("path", "file", "filename", "image")
LIST_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class RowRef:
    """One catalog row before decoding: where its pixels are and what is known about it."""

    row: int
    id: str
    source: str
    index: int | None  # the HDF5 row, None for an image file
    ra: float | None
    dec: float | None


@dataclass
class Segment:
    """Consecutive rows from one input: an HDF5 file (``h5``) or a list of image files (``files``)."""

    kind: str
    source: Path
    n: int
    files: list[str] = field(default_factory=list)
    ids: list[str] | None = None
    ra: np.ndarray | None = None
    dec: np.ndarray | None = None
    stamp: dict = field(default_factory=dict)

    def ref(self, offset: int, row: int) -> RowRef:
        ra = None if self.ra is None or not np.isfinite(self.ra[offset]) else float(self.ra[offset])
        dec = None if self.dec is None or not np.isfinite(self.dec[offset]) else float(self.dec[offset])
        if self.kind == "h5":
            return RowRef(row, f"{self.source.name}[{offset}]", str(self.source), offset, ra, dec)
        path = self.files[offset]
        rid = self.ids[offset] if self.ids is not None else path
        return RowRef(row, rid, path, None, ra, dec)


@dataclass
class CatalogInputs:
    """The planned inputs: segments in order, the total row count and a fingerprint of what they are."""

    segments: list[Segment]

    @property
    def n_rows(self) -> int:
        return sum(s.n for s in self.segments)

    def fingerprint(self) -> str:
        """SHA-256 of the inputs' description (paths, sizes, modification times, row counts)."""
        payload = [[s.kind, str(s.source), s.n, s.stamp] for s in self.segments]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def rows(self, start: int, stop: int) -> list[RowRef]:
        """The rows ``start <= row < stop``."""
        out: list[RowRef] = []
        base = 0
        for seg in self.segments:
            lo, hi = max(start, base), min(stop, base + seg.n)
            out.extend(seg.ref(r - base, r) for r in range(lo, hi))
            base += seg.n
            if base >= stop:
                break
        return out


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _files_stamp(files: Sequence[str]) -> str:
    """SHA-256 of each listed file's name, size and modification time (``missing`` for one that is not
    there): a resumed job refuses a folder or list whose images changed since the job started."""
    digest = hashlib.sha256()
    for name in files:
        try:
            st = os.stat(name)
            digest.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{name}\tmissing\n".encode())
    return digest.hexdigest()


def _walk_images(folder: Path) -> Iterator[Path]:
    """Image files under ``folder``: its files in name order, then each subfolder the same way (hidden ones skipped)."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                yield Path(root) / name


def _folder_segment(folder: Path) -> Segment:
    files = [str(p) for p in _walk_images(folder)]
    if not files:
        raise DataError(
            f"folder {folder} holds no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} images; "
            "give a folder of image files, an HDF5 file or a CSV/Parquet list of paths"
        )
    ids = [os.path.relpath(p, folder) for p in files]
    stamp = {"files": len(files), "contents": _files_stamp(files)}
    return Segment("files", folder, len(files), files=files, ids=ids, stamp=stamp)


def _read_list(path: Path):  # noqa: ANN202 - a pandas DataFrame
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except (ValueError, OSError, ImportError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"cannot read the image list {path} ({first}); give a CSV or Parquet file with a 'path' column"
        ) from None


def _coord(values, path: Path, name: str) -> np.ndarray:  # noqa: ANN001 - a pandas Series
    import pandas as pd

    out = pd.to_numeric(values.replace("", np.nan), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(out) & values.astype(str).str.strip().ne("").to_numpy() & values.notna().to_numpy())
    if len(bad):
        raise DataError(
            f"image list {path}: column {name} row {int(bad[0]) + 2} ({values.iloc[bad[0]]!r}) is not "
            "a number; give degrees or leave it empty"
        )
    return out


def _list_segment(path: Path) -> Segment:
    table = _read_list(path)
    column = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if column is None:
        raise DataError(
            f"image list {path} has no path column; name one of: {', '.join(PATH_COLUMNS)} "
            f"(its columns: {', '.join(map(str, table.columns[:8])) or 'none'})"
        )
    if len(table) == 0:
        raise DataError(f"image list {path} has no rows; list at least one image")
    names = table[column].astype(str).str.strip()
    if (names == "").any():
        first = int(np.flatnonzero((names == "").to_numpy())[0])
        raise DataError(f"image list {path}: row {first + 2} has an empty {column}; give every row an image path")
    base = path.parent
    files = [str(p if Path(p).is_absolute() else base / p) for p in names]
    ids = table["id"].astype(str).tolist() if "id" in table.columns else names.tolist()
    ra = _coord(table["ra"], path, "ra") if "ra" in table.columns else None
    dec = _coord(table["dec"], path, "dec") if "dec" in table.columns else None
    return Segment(
        "files",
        path,
        len(files),
        files=files,
        ids=ids,
        ra=ra,
        dec=dec,
        stamp={**_stamp(path), "contents": _files_stamp(files)},
    )


def _h5_segment(path: Path) -> Segment:
    info = validate_galaxy10(path)
    ra = dec = None
    if info.has_coords:
        with Galaxy10File(path) as f:
            ra, dec = f.coords()
    return Segment("h5", path, info.n_images, ra=ra, dec=dec, stamp=_stamp(path))


def plan_catalog_inputs(args: Sequence[str]) -> CatalogInputs:
    """Check every input cheaply and return its rows in order.

    Raises
    ------
    DataError
        One line naming the input and the fix, for a missing path, an unknown kind of file, an HDF5 file
        that is not Galaxy10-schema, an empty folder or list, or a list without a path column.
    """
    if not args:
        raise DataError("no inputs; give HDF5 files, folders of images or CSV/Parquet lists of image paths")
    segments: list[Segment] = []
    for arg in args:
        path = Path(arg)
        if not path.exists():
            raise DataError(f"input {arg} does not exist; check the path")
        if path.is_dir():
            segments.append(_folder_segment(path))
            continue
        try:
            with path.open("rb") as fh:
                head = fh.read(len(HDF5_SIGNATURE))
        except OSError as err:
            raise DataError(f"cannot read input {arg} ({err.strerror or err}); check its permissions") from None
        suffix = path.suffix.lower()
        if head == HDF5_SIGNATURE:
            segments.append(_h5_segment(path))
        elif suffix in LIST_SUFFIXES:
            segments.append(_list_segment(path))
        elif suffix in IMAGE_SUFFIXES:
            segments.append(Segment("files", path, 1, files=[str(path)], ids=[path.name], stamp=_stamp(path)))
        else:
            raise DataError(
                f"input {arg} is not an HDF5 file, a folder, a CSV/Parquet list or a PNG/JPEG image; give one of those"
            )
    return CatalogInputs(segments)
