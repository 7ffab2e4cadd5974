"""A fast stand-in model for the catalog tests (no TensorFlow): probabilities from colour means per view."""

from __future__ import annotations

import numpy as np

from augment.tta import dihedral_view, mean_of_views
from experiments.serving.predictor import ModelCard, Predictor

CLASSES = ("Round Smooth", "Barred Spiral", "Edge-on Disk")


def _probs(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64) / 255.0
    h = x.shape[1]
    feats = (
        np.stack(
            [x[:, : h // 2].mean(axis=(1, 2, 3)), x[:, :, : h // 2].mean(axis=(1, 2, 3)), x[..., 0].mean(axis=(1, 2))],
            axis=1,
        )
        * 6.0
    )
    e = np.exp(feats - feats.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def views(images: np.ndarray) -> np.ndarray:
    side = min(images.shape[1:3])
    sq = images[:, :side, :side]
    return np.stack([_probs(dihedral_view(sq, j)) for j in range(8)])


def colour_embedding(images: np.ndarray) -> np.ndarray:
    """A 3-number "embedding": the mean colour of each image (0..1)."""
    return images.reshape(len(images), -1, 3).mean(axis=1) / 255.0


def fake_predictor(*, with_views: bool = True, with_embedding: bool = False) -> Predictor:
    card = ModelCard(
        uri="models:/fake@champion",
        kind="keras",
        size=32,
        crop=24,
        class_names=CLASSES,
        name="fake",
        version="1",
        synthetic=True,
    )
    return Predictor(
        card=card,
        predict_fn=lambda im: mean_of_views(views(im)),
        views_fn=views if with_views else None,
        embed_fn=colour_embedding if with_embedding else None,
    )
