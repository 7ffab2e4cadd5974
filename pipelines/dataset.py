"""The data set a run reads: opened and validated once, with its class set, fingerprint, split and images.

:func:`open_dataset` opens the file exactly once; the split (with its cached duplicate groups), the
fingerprint and the resized-image cache all read through that one handle. Every command builds one
:class:`TrainData` and hands it on; nothing below re-opens the file by path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DataError
from core.paths import resolve_data_path
from pipelines.classes import CLASS_NAMES, ClassSet, absent_classes
from pipelines.preprocess import load_resized, resize_images
from pipelines.reader import Galaxy10File, data_fingerprint, provenance
from pipelines.splits import ensure_split

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class TrainData:
    """Everything a run reads from the data, loaded once (a tuning worker reuses it across trials).

    ``images`` are the uint8 resized images (``size`` px, usually a read-only memmap) in file
    order; ``train``/``val``/``test`` index into them.
    """

    path: Path
    images: np.ndarray
    labels: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    class_names: tuple[str, ...]
    class_slugs: tuple[str, ...]
    fingerprint: str
    synthetic: bool
    provenance: str
    size: int

    @property
    def num_classes(self) -> int:
        """Number of classes of the data set."""
        return len(self.class_names)

    @property
    def class_set(self) -> ClassSet:
        """The data's classes (names and slugs in label order)."""
        return ClassSet(self.class_names, self.class_slugs)

    def describe(self) -> str:
        """One line for the log: file, image counts and whether the data is synthetic."""
        kind = "SYNTHETIC data" if self.synthetic else f"real data ({self.provenance})"
        return (
            f"{self.path} [{kind}, fingerprint {self.fingerprint[:12]}]: {len(self.train)} train / "
            f"{len(self.val)} val / {len(self.test)} test images at {self.size} px"
        )


def open_dataset(
    path: str | Path | None,
    *,
    size: int,
    test_fraction: float,
    val_fraction: float,
    split_seed: int | None,
    max_images: int | None = None,
    check_classes: Callable[[ClassSet], None] | None = None,
) -> TrainData:
    """Open and validate the data file once, make or load its split, load the resized images (cached).

    ``path`` None resolves to the real file if present, else the synthetic default. With
    ``max_images`` only the first N images are used (resized in memory, nothing cached) and the split
    is restricted to them. ``check_classes(classes)`` runs right after the file is opened, before a
    split or cache is written (e.g. to check targeted class names against the file's own classes).
    """
    path = resolve_data_path(path)
    with Galaxy10File(path) as f:
        info = f.info
        classes = ClassSet.from_names(tuple(getattr(info, "class_names", None) or CLASS_NAMES))
        if check_classes is not None:
            check_classes(classes)
        split = ensure_split(path, test_fraction=test_fraction, val_fraction=val_fraction, seed=split_seed, source=f)
        labels = np.asarray(f.labels()).astype(np.int64)
        n = len(labels)
        limit = n if max_images is None else min(n, max_images)
        if limit < n:
            images = resize_images(f.images(np.arange(limit)), size)
        else:
            images = load_resized(path, size=size, source=f)
    labels = labels[:limit]
    train, val, test = (np.asarray(s, dtype=np.int64) for s in (split.train, split.val, split.test))
    train, val, test = train[train < limit], val[val < limit], test[test < limit]
    if len(train) == 0 or len(val) == 0:
        raise DataError(
            f"data.max_images={limit} leaves {len(train)} train / {len(val)} val images; raise data.max_images"
        )
    names, slugs = classes.names, classes.slugs
    for split_name, rows in (("train", train), ("validation", val), ("test", test)):
        absent = absent_classes(labels[rows], slugs) if len(rows) else []
        if absent:
            log.warning(
                "the %s split of %s has no image of class(es) %s: their recall is not measured and macro "
                "metrics average over the %d classes present",
                split_name,
                path.name,
                ", ".join(absent),
                len(slugs) - len(absent),
            )
    return TrainData(
        path=path,
        images=images,
        labels=labels,
        train=train,
        val=val,
        test=test,
        class_names=tuple(names),
        class_slugs=tuple(slugs),
        fingerprint=data_fingerprint(path),
        synthetic=bool(info.synthetic),
        provenance=str(provenance(path, info)),
        size=size,
    )
