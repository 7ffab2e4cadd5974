"""A gallery figure (PNG, JPEG, PDF or SVG) of a Galaxy10-schema file: a few random examples per class,
one row per class."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import ConfigError
from core.files import atomic_path
from core.outputs import OWNER_TAG, check_output_file
from pipelines.reader import DatasetInfo, Galaxy10File

log = logging.getLogger(__name__)


def pick_examples(labels: np.ndarray, num_classes: int, per_class: int, seed: int) -> list[np.ndarray]:
    """Up to ``per_class`` random indices of each class, each list sorted."""
    rng = np.random.default_rng(seed)
    picks = []
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)
        chosen = rng.choice(idx, size=min(per_class, idx.size), replace=False) if idx.size else idx
        picks.append(np.sort(chosen))
    return picks


def gallery_title(info: DatasetInfo) -> str:
    """Figure title: file name, size, and SYNTHETIC in front for synthetic files."""
    kind = "SYNTHETIC " if info.synthetic else ""
    return f"{kind}Galaxy10 gallery: {info.path.name} ({info.n_images} images, {info.image_size} px)"


def _thumbnail(image: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or size == image.shape[0]:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


#: Figure formats by file suffix, and how each carries :data:`core.outputs.OWNER_TAG`.
FORMATS: dict[str, str] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg"}
MAX_PER_CLASS = 100
MAX_THUMB = 1024
#: Largest gallery canvas in pixels (a 10-class, 6-per-class, 128 px gallery has ~0.6 million).
MAX_CANVAS_PIXELS = 100_000_000


def _owner_metadata(fmt: str) -> dict:
    """``savefig`` keywords that stamp the figure as written by galaxy10 (see :mod:`core.outputs`)."""
    if fmt == "png":
        return {"metadata": {"Software": OWNER_TAG}}
    if fmt in ("pdf", "svg"):
        return {"metadata": {"Creator": OWNER_TAG}}
    return {"pil_kwargs": {"comment": OWNER_TAG.encode()}}


def check_gallery_request(out: str | os.PathLike, *, per_class: int, thumb: int | None, force: bool = False) -> str:
    """Validate the gallery options before any image is read; return the figure format.

    Raises
    ------
    ConfigError
        One line for an option out of range, an unknown suffix or an output that may not be written.
    """
    if not 1 <= per_class <= MAX_PER_CLASS:
        raise ConfigError(f"--per-class {per_class} is out of range; use 1-{MAX_PER_CLASS}")
    if thumb is not None and not 16 <= thumb <= MAX_THUMB:
        raise ConfigError(f"--thumb {thumb} is out of range; use 16-{MAX_THUMB} px")
    fmt = FORMATS.get(Path(out).suffix.lower())
    if fmt is None and not Path(out).is_dir():
        raise ConfigError(
            f"--out {out} has suffix {Path(out).suffix or '(none)'!r}; name a "
            f"{', '.join(sorted(set(FORMATS)))} file, e.g. gallery.png"
        )
    check_output_file(out, force=force)
    return str(fmt)


def make_gallery(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    per_class: int = 6,
    seed: int = 0,
    thumb: int | None = 128,
    force: bool = False,
) -> Path:
    """Write a grid of ``per_class`` examples per class (rows, named) from ``path`` to the figure ``out``.

    The format follows the suffix of ``out`` (:data:`FORMATS`). Images are read lazily (only the
    chosen rows). ``thumb`` is the side of each thumbnail in pixels (None: the images' own size).
    The title says SYNTHETIC for synthetic files. An existing ``out`` is replaced only if galaxy10
    wrote it, or with ``force``.
    """
    fmt = check_gallery_request(out, per_class=per_class, thumb=thumb, force=force)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Galaxy10File(path) as g10:
        info = g10.info
        side = thumb or info.image_size
        canvas = per_class * side * info.num_classes * side
        if canvas > MAX_CANVAS_PIXELS:
            raise ConfigError(
                f"a gallery of {info.num_classes} classes x {per_class} images of {side} px is "
                f"{canvas / 1e6:.0f} million pixels, over the {MAX_CANVAS_PIXELS // 10**6} million "
                "limit; lower --per-class or --thumb"
            )
        picks = pick_examples(g10.labels(), info.num_classes, per_class, seed)
        rows = [
            g10.images(p) if p.size else np.zeros((0, info.image_size, info.image_size, 3), np.uint8) for p in picks
        ]
    dpi = 100
    label_w = 2.3
    fig_w, fig_h = label_w + per_class * side / dpi, 0.5 + info.num_classes * side / dpi
    fig, axes = plt.subplots(info.num_classes, per_class, figsize=(fig_w, fig_h), dpi=dpi, squeeze=False)
    fig.patch.set_facecolor("white")
    for k, (name, images) in enumerate(zip(info.class_names, rows)):
        for j in range(per_class):
            ax = axes[k, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(images):
                ax.imshow(_thumbnail(images[j], side), interpolation="nearest")
            elif j == 0:
                ax.text(0.5, 0.5, "no images", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        axes[k, 0].set_ylabel(
            f"{k}: {name}\n({info.class_counts[k]})", rotation=0, ha="right", va="center", fontsize=9, labelpad=6
        )
    fig.suptitle(gallery_title(info), fontsize=10, y=1 - 0.12 / fig_h)
    fig.subplots_adjust(
        left=label_w / fig_w, right=0.995, bottom=0.05 / fig_h, top=1 - 0.4 / fig_h, wspace=0.03, hspace=0.03
    )
    target = Path(out)
    with atomic_path(target, suffix=f".{fmt}.tmp") as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, **_owner_metadata(fmt))
    plt.close(fig)
    log.info("wrote gallery %s", target)
    return target
