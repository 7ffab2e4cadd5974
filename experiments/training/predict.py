"""A trained CNN's predictions on a split of the run's data: probabilities (with test-time views), metrics, speed."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from augment.tta import tta_predict
from experiments.training.evaluation import classification_metrics
from pipelines.dataset import TrainData

log = logging.getLogger(__name__)


def predict_probs(
    model: Any, data: TrainData, indices: np.ndarray, *, crop: int, batch_size: int = 256, tta: bool = False
) -> np.ndarray:
    """Softmax probabilities ``(len(indices), C)`` for ``data.images[indices]`` (8-view TTA if asked)."""
    from pipelines.inputs import cropped_array, make_eval_dataset

    if tta:
        crops = cropped_array(data.images, crop, indices)

        def predict_fn(x: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0))

        return tta_predict(predict_fn, crops, batch_size=batch_size)
    ds = make_eval_dataset(data.images, crop=crop, batch_size=batch_size, indices=indices)
    return np.asarray(model.predict(ds, verbose=0), dtype=np.float32)


def inference_images_per_second(
    model: Any, data: TrainData, *, crop: int, tta: bool = False, n_images: int = 256
) -> float:
    """Images per second of :func:`predict_probs` (the forward pass, 8 views with TTA) on this machine.

    Timed on up to ``n_images`` validation crops after one warm-up call (graph tracing is not counted);
    what a catalog of already-decoded images costs per image, for choosing a model for a survey.
    """
    rows = np.asarray(data.val if len(data.val) else data.train)[:n_images]
    predict_probs(model, data, rows[:8], crop=crop, tta=tta)
    start = time.perf_counter()
    predict_probs(model, data, rows, crop=crop, tta=tta)
    return len(rows) / max(time.perf_counter() - start, 1e-9)


def evaluate(model: Any, data: TrainData, indices: np.ndarray, *, crop: int, tta: bool = False) -> dict[str, Any]:
    """:func:`~experiments.training.evaluation.classification_metrics` of the model on ``indices``."""
    probs = predict_probs(model, data, indices, crop=crop, tta=tta)
    return classification_metrics(data.labels[indices], probs, data.class_slugs)
