"""The unlabelled pool: every image of the inputs ``galaxy10 catalog`` takes, square-cropped and resized."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from core.errors import DataError
from experiments.catalog.inputs import CatalogInputs, plan_catalog_inputs
from experiments.catalog.job import decode_file
from pipelines.preprocess import resize_images, square_crop
from pipelines.reader import Galaxy10File

log = logging.getLogger(__name__)

#: Images decoded and resized at a time.
POOL_BATCH = 256


@dataclass(frozen=True)
class Pool:
    """The pool's uint8 images ``(N, size, size, 3)`` and what they are (labels in the inputs are ignored)."""

    images: np.ndarray
    fingerprint: str
    sources: tuple[str, ...]
    skipped: tuple[str, ...]
    synthetic: bool = False

    def describe(self) -> str:
        kind = "SYNTHETIC " if self.synthetic else ""
        return (
            f"{len(self.images):,} {kind}unlabelled images from {', '.join(self.sources)} (fingerprint "
            f"{self.fingerprint[:12]}" + (f"; {len(self.skipped)} unreadable skipped" if self.skipped else "") + ")"
        )


def load_pool(inputs: Sequence[str] | CatalogInputs, size: int) -> Pool:
    """Decode every row of ``inputs`` (HDF5 files, folders, CSV/Parquet lists) at ``size`` px; unreadable
    image files are skipped and counted, an empty pool is one ``DataError`` line."""
    plan = inputs if isinstance(inputs, CatalogInputs) else plan_catalog_inputs(list(inputs))
    parts: list[np.ndarray] = []
    skipped: list[str] = []
    synthetic = False
    with tqdm(total=plan.n_rows, desc="pool", unit="img", disable=None) as bar:
        for seg in plan.segments:
            if seg.kind == "h5":
                with Galaxy10File(seg.source) as f:
                    synthetic = synthetic or bool(f.info.synthetic)
                    for start in range(0, seg.n, POOL_BATCH):
                        rows = np.arange(start, min(seg.n, start + POOL_BATCH))
                        parts.append(resize_images(np.asarray(f.images(rows)), size))
                        bar.update(len(rows))
                continue
            for start in range(0, seg.n, POOL_BATCH):
                batch = []
                for path in seg.files[start : start + POOL_BATCH]:
                    image, error = decode_file(path)
                    if image is None:
                        skipped.append(f"{path}: {error}")
                    else:
                        batch.append(resize_images(square_crop(image)[None], size)[0])
                    bar.update(1)
                if batch:
                    parts.append(np.stack(batch))
    if not parts:
        raise DataError(
            f"the unlabelled pool is empty ({len(skipped)} unreadable image(s)); give inputs that hold readable images"
        )
    if skipped:
        log.warning("pool: %d unreadable image(s) skipped, e.g. %s", len(skipped), skipped[0])
    return Pool(
        np.concatenate(parts),
        plan.fingerprint(),
        tuple(str(s.source) for s in plan.segments),
        tuple(skipped),
        synthetic,
    )
