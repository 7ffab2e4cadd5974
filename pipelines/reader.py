"""Read and validate Galaxy10-schema HDF5 files lazily, and say where a file came from.

The schema (Galaxy10 DECaLS, Zenodo record 10845026): ``images`` uint8 ``(N, H, W, 3)`` with
``H == W``, ``ans`` integer labels ``(N,)``, optional ``ra``, ``dec``, ``redshift``, ``pxscale``
of length ``N``. Files written by ``galaxy10 data import`` may carry a root attribute
``class_names`` (a JSON list); their labels are then checked against ``0..len(class_names)-1``
instead of ``0..9``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
from tqdm.auto import tqdm

from core.errors import DataError
from core.files import write_json_atomic
from core.paths import ZENODO_URL, default_cache_dir, real_data_path
from pipelines.classes import CLASS_NAMES, OFFICIAL_SHA256

log = logging.getLogger(__name__)

REQUIRED_KEYS: tuple[str, ...] = ("images", "ans")
OPTIONAL_KEYS: tuple[str, ...] = ("ra", "dec", "redshift", "pxscale")
#: Images read per HDF5 call in :meth:`Galaxy10File.images`.
READ_CHUNK: int = 256
_HASH_BLOCK = 8 << 20
_HASH_PROGRESS_MIN_BYTES = 256 << 20
_SOURCE = f"official release: Zenodo record 10845026, {ZENODO_URL}"
_OR_SYNTH = "or run `galaxy10 data synth` for the synthetic default"
_FETCH = f"fetch it again ({_SOURCE}) {_OR_SYNTH}"

Provenance = Literal["official", "modified", "imported", "synthetic"]


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`validate_galaxy10` learned about a file (metadata and labels only)."""

    path: Path
    n_images: int
    image_size: int
    has_coords: bool
    synthetic: bool
    attrs: dict
    class_counts: tuple[int, ...]
    class_names: tuple[str, ...] = CLASS_NAMES
    optional_arrays: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of classes (10 for Galaxy10, ``len(class_names)`` for a custom set)."""
        return len(self.class_names)

    @property
    def is_custom(self) -> bool:
        """True when the file carries its own class set instead of the Galaxy10 ten."""
        return self.class_names != CLASS_NAMES


def _plain(value: Any) -> Any:
    """Turn an HDF5 attribute value into a plain Python value (bytes decoded to str)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_attrs(f: h5py.File) -> dict:
    """Return the root attributes of an open HDF5 file as plain Python values."""
    return {str(k): _plain(v) for k, v in f.attrs.items()}


def class_names_from_attrs(attrs: dict, path: str | os.PathLike = "") -> tuple[str, ...]:
    """Return the file's ``class_names`` attribute (JSON list or array), else the Galaxy10 names.

    Raises
    ------
    DataError
        If the attribute is present but is not a non-empty list of distinct strings.
    """
    raw = attrs.get("class_names")
    if raw is None:
        return CLASS_NAMES
    names: Any = raw
    if isinstance(raw, str):
        try:
            names = json.loads(raw)
        except json.JSONDecodeError:
            names = None
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) for n in names)
        or len(set(names)) != len(names)
        or len(names) > 256
    ):
        raise DataError(
            f"{path}: root attribute 'class_names' is {raw!r}, not a JSON list of 1-256 distinct "
            "names; rewrite it (e.g. attrs['class_names'] = json.dumps(['a', 'b'])) or delete it "
            "for Galaxy10 labels 0-9"
        )
    return tuple(names)


def _check_file(path: Path) -> None:
    """Existence, not-a-directory, size and HDF5 signature checks (no HDF5 open)."""
    if not path.exists():
        raise DataError(
            f"data file {path} not found; put Galaxy10_DECals.h5 at {real_data_path()} ({_SOURCE}) {_OR_SYNTH}"
        )
    if path.is_dir():
        raise DataError(f"{path} is a directory, not an HDF5 file; pass the .h5 file itself (e.g. {real_data_path()})")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path} is an empty file (0 bytes), not HDF5; the download or copy failed: {_FETCH}")
    if not h5py.is_hdf5(path):
        raise DataError(
            f"{path} is not an HDF5 file (no HDF5 signature, {size} bytes); pass a "
            f"Galaxy10 .h5 file ({_SOURCE}) {_OR_SYNTH}"
        )


def _open(path: Path) -> h5py.File:
    """Open ``path`` read-only, turning h5py's OSError into a one-line DataError."""
    try:
        return h5py.File(path, "r")
    except OSError as err:
        text = str(err)
        m = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
        if m:
            raise DataError(
                f"{path} is truncated ({int(m.group(1))} of {int(m.group(2))} bytes): the download "
                f"or copy was cut short; {_FETCH}"
            ) from None
        detail = text.splitlines()[0] if text else type(err).__name__
        raise DataError(f"{path} is a corrupt or truncated HDF5 file (h5py: {detail}); {_FETCH}") from None


def _check_schema(path: Path, f: h5py.File) -> tuple[h5py.Dataset, h5py.Dataset]:
    """Check keys, dtypes, ranks, square RGB images and matching lengths; return the datasets."""
    missing = [k for k in REQUIRED_KEYS if not isinstance(f.get(k), h5py.Dataset)]
    if missing:
        found = ", ".join(sorted(f.keys())) or "none"
        raise DataError(
            f"{path} lacks the HDF5 dataset(s) {', '.join(repr(k) for k in missing)} (found: {found}); "
            "a Galaxy10 file needs 'images' uint8 (N, H, W, 3) and 'ans' (N,) integer labels"
        )
    images, ans = f["images"], f["ans"]
    if images.dtype != np.uint8:
        raise DataError(
            f"{path}: 'images' has dtype {images.dtype}, expected uint8 pixels 0-255; "
            "re-save them with np.clip(x, 0, 255).astype(np.uint8)"
        )
    if images.ndim != 4:
        raise DataError(
            f"{path}: 'images' has shape {images.shape} (rank {images.ndim}), expected "
            "rank 4 (N, H, W, 3); store one RGB image per row"
        )
    _, h, w, c = images.shape
    if h != w:
        raise DataError(
            f"{path}: images are {h}x{w}, not square; centre-crop them to square (`galaxy10 data import` does this)"
        )
    if c != 3:
        raise DataError(
            f"{path}: images have {c} channels, expected 3 (RGB); convert them to RGB "
            "(`galaxy10 data import` does this)"
        )
    if not np.issubdtype(ans.dtype, np.integer):
        raise DataError(
            f"{path}: 'ans' has dtype {ans.dtype}, expected integer class labels (uint8); store labels as integers 0-9"
        )
    if ans.ndim != 1:
        raise DataError(f"{path}: 'ans' has shape {ans.shape}, expected one label per image (N,)")
    if ans.shape[0] != images.shape[0]:
        raise DataError(
            f"{path}: 'ans' has {ans.shape[0]} labels but 'images' has {images.shape[0]} "
            "images; give exactly one label per image"
        )
    if images.shape[0] == 0:
        raise DataError(f"{path} holds 0 images; regenerate or re-import it, or {_FETCH}")
    for key in OPTIONAL_KEYS:
        ds = f.get(key)
        if ds is None:
            continue
        if not isinstance(ds, h5py.Dataset) or ds.shape != (images.shape[0],):
            shape = ds.shape if isinstance(ds, h5py.Dataset) else "a group"
            raise DataError(
                f"{path}: '{key}' has shape {shape} but there are {images.shape[0]} "
                f"images; give one value per image or delete '{key}'"
            )
    return images, ans


def _check_labels(path: Path, labels: np.ndarray, class_names: tuple[str, ...]) -> np.ndarray:
    """Check labels lie in ``0..K-1``; return per-class counts."""
    k = len(class_names)
    bad = (labels < 0) | (labels >= k)
    n_bad = int(bad.sum())
    if n_bad:
        vals = labels[bad]
        where = (
            "Galaxy10 labels must be 0-9" if class_names == CLASS_NAMES else f"the file's class_names lists {k} classes"
        )
        raise DataError(
            f"{path}: {n_bad} of {len(labels)} labels are outside 0..{k - 1} (bad values "
            f"{int(vals.min())}..{int(vals.max())}); {where}: fix or drop those rows"
        )
    return np.bincount(labels.astype(np.int64), minlength=k)


@contextlib.contextmanager
def _h5_errors(path: Path, what: str) -> Iterator[None]:
    """Turn what h5py raises on a damaged file (OSError, RuntimeError, KeyError, ValueError) into a DataError."""
    try:
        yield
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{path} is corrupt: {what} failed (h5py: {detail}); {_FETCH}") from None


def _validate_open(path: Path, f: h5py.File) -> tuple[DatasetInfo, np.ndarray]:
    with _h5_errors(path, "reading its layout"):
        return _validate_layout(path, f)


def _validate_layout(path: Path, f: h5py.File) -> tuple[DatasetInfo, np.ndarray]:
    images, ans = _check_schema(path, f)
    attrs = read_attrs(f)
    class_names = class_names_from_attrs(attrs, path)
    try:
        labels = ans[()]
    except OSError as err:
        raise DataError(
            f"{path}: 'ans' cannot be read ({str(err).splitlines()[0]}); the file is corrupt; {_FETCH}"
        ) from None
    counts = _check_labels(path, labels, class_names)
    info = DatasetInfo(
        path=path,
        n_images=int(images.shape[0]),
        image_size=int(images.shape[1]),
        has_coords="ra" in f and "dec" in f,
        synthetic=bool(attrs.get("synthetic", False)),
        attrs=attrs,
        class_counts=tuple(int(c) for c in counts),
        class_names=class_names,
        optional_arrays=tuple(k for k in OPTIONAL_KEYS if k in f),
    )
    return info, labels


def validate_galaxy10(path: str | os.PathLike) -> DatasetInfo:
    """Check that ``path`` is a readable Galaxy10-schema HDF5 file; read only metadata and labels.

    Raises
    ------
    DataError
        One line naming the first problem found and how to fix it.
    """
    path = Path(path)
    _check_file(path)
    with _open(path) as f:
        info, _ = _validate_open(path, f)
    return info


@contextlib.contextmanager
def opened(path: str | os.PathLike, source: Galaxy10File | None = None) -> Iterator[Galaxy10File]:
    """``source`` itself when the caller already holds the file open (not closed here), else a new
    :class:`Galaxy10File` for ``path``: lets a command open and validate its data file once."""
    if source is not None:
        yield source
        return
    with Galaxy10File(path) as f:
        yield f


class Galaxy10File:
    """A validated, lazily read Galaxy10 HDF5 file; use as a context manager.

    Examples
    --------
    >>> with Galaxy10File("data/galaxy10_synthetic.h5") as g10:  # doctest: +SKIP
    ...     x = g10.images([5, 1, 3])  # rows 5, 1, 3 in that order
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        _check_file(self.path)
        self._f = _open(self.path)
        try:
            self.info, self._labels = _validate_open(self.path, self._f)
        except BaseException:
            self._f.close()
            raise

    def __enter__(self) -> Galaxy10File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying HDF5 file; reading afterwards raises ``ValueError``."""
        self._f.close()

    def _check_open(self) -> None:
        """``ValueError`` once the file was closed (reading it then is a caller's error, not a corrupt file)."""
        if not self._f.id.valid:
            raise ValueError(f"I/O on a closed Galaxy10File ({self.path}); open it again")

    def __len__(self) -> int:
        return self.info.n_images

    def labels(self) -> np.ndarray:
        """All labels as uint8 ``(N,)``."""
        return self._labels.astype(np.uint8, copy=True)

    def coords(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ra, dec)`` in degrees as float64, or None when the file has no coordinates."""
        if not self.info.has_coords:
            return None
        self._check_open()
        with _h5_errors(self.path, "reading ra/dec"):
            return (np.asarray(self._f["ra"][()], dtype=np.float64), np.asarray(self._f["dec"][()], dtype=np.float64))

    def _as_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise IndexError(f"indices must be a 1-D integer sequence, got shape {idx.shape} dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        n = self.info.n_images
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"image index out of range 0..{n - 1} in {self.path}")
        return idx

    def _read_sorted_unique(self, rows: np.ndarray) -> np.ndarray:
        """Read strictly increasing ``rows``: one slice when dense, else one slice per consecutive run.

        (h5py's point-list indexing, ``ds[rows]``, is ~50x slower than slices for scattered rows.)
        """
        ds = self._f["images"]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo <= 2 * len(rows):
            block = ds[lo:hi]
            return block if hi - lo == len(rows) else block[rows - lo]
        out = np.empty((len(rows), *ds.shape[1:]), dtype=ds.dtype)
        starts = np.flatnonzero(np.diff(rows) != 1) + 1
        for a, b in zip(np.r_[0, starts], np.r_[starts, len(rows)]):
            ds.read_direct(out, np.s_[int(rows[a]) : int(rows[b - 1]) + 1], np.s_[int(a) : int(b)])
        return out

    def images(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Images as uint8 ``(len(indices), H, W, 3)`` in the requested order (all when None).

        Rows are read in sorted order, ``READ_CHUNK`` at a time, and placed back in request order;
        repeated indices are allowed.
        """
        self._check_open()
        if indices is None:
            with _h5_errors(self.path, "reading the images"):
                return self._f["images"][()]
        idx = self._as_indices(indices)
        s = self.info.image_size
        out = np.empty((len(idx), s, s, 3), dtype=np.uint8)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        for a in range(0, len(idx), READ_CHUNK):
            part = sorted_idx[a : a + READ_CHUNK]
            rows, inverse = np.unique(part, return_inverse=True)
            with _h5_errors(self.path, "reading the images"):
                out[order[a : a + READ_CHUNK]] = self._read_sorted_unique(rows)[inverse]
        return out

    def iter_batches(
        self, batch_size: int, indices: Sequence[int] | np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices, images)`` batches of at most ``batch_size``, in the given order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if indices is None:
            n = self.info.n_images
            for a in range(0, n, batch_size):
                b = min(a + batch_size, n)
                self._check_open()
                with _h5_errors(self.path, "reading the images"):
                    batch = self._f["images"][a:b]
                yield np.arange(a, b, dtype=np.int64), batch
            return
        idx = self._as_indices(indices)
        for a in range(0, len(idx), batch_size):
            part = idx[a : a + batch_size]
            yield part, self.images(part)


def _cache_file(path: Path, cache_dir: Path, st: os.stat_result) -> Path:
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return cache_dir / "sha256" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def file_sha256(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 hex digest of a file, streamed in blocks and cached by absolute path, size and mtime.

    The cache is a small JSON under ``<cache_dir>/sha256/`` (default
    :func:`core.paths.default_cache_dir`), written atomically.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cannot hash {path}: not a file; check the path")
    st = path.stat()
    cache = _cache_file(path, Path(cache_dir) if cache_dir is not None else default_cache_dir(), st)
    if cache.is_file():
        try:
            entry = json.loads(cache.read_text())
            if (
                entry.get("path") == str(path.resolve())
                and entry.get("size") == st.st_size
                and entry.get("mtime_ns") == st.st_mtime_ns
            ):
                return str(entry["sha256"])
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable SHA-256 cache entry %s", cache)
    digest = hashlib.sha256()
    with (
        open(path, "rb") as fh,
        tqdm(
            total=st.st_size,
            unit="B",
            unit_scale=True,
            desc=f"sha256 {path.name}",
            leave=False,
            disable=True if st.st_size < _HASH_PROGRESS_MIN_BYTES else None,
        ) as bar,
    ):
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
            bar.update(len(block))
    hexdigest = digest.hexdigest()
    try:
        write_json_atomic(
            cache, {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": hexdigest}
        )
    except OSError as err:
        log.warning("could not cache the SHA-256 of %s in %s: %s", path, cache.parent, err)
    return hexdigest


def data_fingerprint(path: str | os.PathLike) -> str:
    """The file's SHA-256 hex (short form: the first 12 characters)."""
    return file_sha256(path)


def provenance(path: str | os.PathLike, info: DatasetInfo | None = None) -> Provenance:
    """``"official"`` (SHA-256 of the Zenodo release), ``"synthetic"`` (root attr), ``"imported"`` (written
    by ``galaxy10 data import`` from the user's own images), else ``"modified"``.

    The file is validated first, unless its ``info`` is given (it was validated when opened). A file
    marked synthetic or imported is never the official release, so its hash is not computed here.
    """
    info = info if info is not None else validate_galaxy10(path)
    if info.synthetic:
        return "synthetic"
    if info.attrs.get("source") == "import":
        return "imported"
    return "official" if file_sha256(path) == OFFICIAL_SHA256 else "modified"
