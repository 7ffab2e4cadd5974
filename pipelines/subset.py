"""A Galaxy10-schema file holding some rows of another (a cross-validation fold's training images)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from core.files import atomic_path
from core.outputs import H5_OWNER_ATTR

#: Datasets copied row by row when the source has them.
ROW_DATASETS: tuple[str, ...] = ("images", "ans", "ra", "dec", "redshift", "pxscale")


def write_subset(source: str | os.PathLike, rows: np.ndarray, out: str | os.PathLike, *, note: str) -> Path:
    """Copy ``rows`` (file indices, any order; written sorted) of ``source`` into ``out`` with its attributes.

    The copy keeps the class names, provenance attributes and the synthetic flag, and records where it came
    from (``subset_of``, ``subset_note``); it is written to a temporary name and renamed into place.
    """
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    with h5py.File(source, "r") as src, atomic_path(out, suffix=".h5.tmp") as tmp, h5py.File(tmp, "w") as dst:
        for name in ROW_DATASETS:
            if name in src:
                data = src[name]
                dst.create_dataset(
                    name,
                    data=data[rows] if name != "images" else _rows(data, rows),
                    chunks=(1, *data.shape[1:]) if name == "images" else None,
                )
        dst.attrs.update(dict(src.attrs))
        dst.attrs.update(
            {"subset_of": str(Path(source).resolve()), "subset_note": note, H5_OWNER_ATTR: "galaxy10 evaluate"}
        )
    return Path(out)


def _rows(dataset: h5py.Dataset, rows: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([dataset[rows[i : i + batch]] for i in range(0, len(rows), batch)])
