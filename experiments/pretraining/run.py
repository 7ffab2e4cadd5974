"""One pretraining run: VICReg on the pool, epoch by epoch, checkpointed, monitored, within a budget.

After each epoch the run writes a checkpoint (the VICReg model's weights, the optimizer's state, the
epoch, the history) to ``checkpoint_dir`` atomically, so a killed ``galaxy10 pretrain`` given the same
settings and pool continues from the last finished epoch. With a labelled ``monitor`` data set the
encoder's k-nearest-neighbour accuracy (cosine, on the embedding layer) is measured before training (the
random initialisation, the baseline it must beat) and every ``monitor_every`` epochs. Nothing here knows
MLflow: a tracker is passed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from augment.views import ViewPolicy, make_view_fn
from core.errors import ConfigError
from core.files import atomic_path
from experiments.settings.run import RunConfig
from experiments.tracking.base import NullTracker
from models import build_model, describe_backbone
from models.selfsup import build_vicreg, embedding_encoder
from pipelines.preprocess import PREPROCESS_VERSION

log = logging.getLogger(__name__)


def checkpoint_path(folder: Path, key: str) -> Path:
    """Where the checkpoint of run ``key`` lives in ``folder``."""
    return folder / f"pretrain-{key}.npz"


#: Classes of the placeholder classifier a pretrained model carries (replaced when it is fine-tuned).
PLACEHOLDER_CLASSES = 2


@dataclass(frozen=True)
class PretrainSettings:
    """How long and how hard to pretrain."""

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    policy: ViewPolicy = field(default_factory=ViewPolicy)
    projector_units: int = 256
    monitor_every: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= 10_000:
            raise ConfigError(f"--epochs {self.epochs} is out of range; use 1-10,000")
        if not 4 <= self.batch_size <= 4096:
            raise ConfigError(
                f"--batch-size {self.batch_size} is out of range; use 4-4,096 (VICReg needs a few "
                "images per batch to measure their spread)"
            )
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate < 1):
            raise ConfigError(f"--learning-rate {self.learning_rate} is out of range; use 0 < lr < 1 (e.g. 1e-3)")


@dataclass
class PretrainResult:
    """The pretrained model (the platform's classifier model, its backbone and embedding pretrained)."""

    model: Any
    history: list[dict[str, float]]
    knn: dict[int, float]
    epochs_run: int
    resumed_from: int
    seconds: float
    meta: dict[str, Any]


def run_key(cfg: RunConfig, settings: PretrainSettings, pool_fingerprint: str) -> str:
    """What a checkpoint must match to be continued: the model, its input, the settings and the pool."""
    doc = {
        "model": describe_backbone(cfg.model),
        "size": cfg.data.size,
        "crop": cfg.data.crop,
        "settings": repr(settings),
        "pool": pool_fingerprint,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def knn_accuracy(encoder: Any, monitor: Any, crop: int, k: int = 20) -> float:
    """Accuracy on ``monitor``'s validation split of a cosine k-NN classifier on the encoder's embeddings
    of its training split (a frozen-feature probe: no training of the encoder)."""
    from sklearn.neighbors import KNeighborsClassifier

    from pipelines.inputs import cropped_array

    def embed(rows: np.ndarray) -> np.ndarray:
        x = cropped_array(monitor.images, crop, rows).astype(np.float32)
        return np.asarray(encoder.predict(x, batch_size=256, verbose=0), dtype=np.float32)

    train, val = np.asarray(monitor.train), np.asarray(monitor.val)
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train)), metric="cosine", weights="distance")
    knn.fit(embed(train), monitor.labels[train])
    return float(np.mean(knn.predict(embed(val)) == monitor.labels[val]))


def _save_checkpoint(folder: Path, key: str, vicreg: Any, epoch: int, history: list, knn: Mapping[int, float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(vicreg.get_weights())}
    arrays.update({f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(vicreg.optimizer.variables)})
    meta = json.dumps({"key": key, "epoch": epoch, "history": history, "knn": {str(k): v for k, v in knn.items()}})
    with atomic_path(checkpoint_path(folder, key), suffix=".npz.tmp") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, meta=np.array(meta), **arrays)


def _load_checkpoint(folder: Path | None, key: str, vicreg: Any) -> tuple[int, list, dict[int, float]]:
    """Restore the checkpoint of this run into ``vicreg``; ``(epochs done, history, knn)``, zeros if none."""
    path = None if folder is None else checkpoint_path(folder, key)
    if path is None or not path.is_file():
        return 0, [], {}
    with np.load(path) as doc:
        meta = json.loads(str(doc["meta"]))
        if meta["key"] != key:
            raise ConfigError(
                f"{path} holds a pretraining checkpoint of other settings, model or pool; give another "
                "--checkpoint-dir or the same settings and inputs to continue it"
            )
        weights = [doc[f"w{i}"] for i in range(len(vicreg.get_weights()))]
        vicreg.set_weights(weights)
        vicreg.optimizer.build(vicreg.trainable_variables)
        for i, var in enumerate(vicreg.optimizer.variables):
            var.assign(doc[f"o{i}"])
    log.info("continuing pretraining from %s: %d epoch(s) done", path, meta["epoch"])
    return int(meta["epoch"]), list(meta["history"]), {int(k): float(v) for k, v in meta["knn"].items()}


def build_pretrain_model(cfg: RunConfig, seed: int = 0) -> Any:
    """The platform model of ``cfg`` (a placeholder classifier) in a fresh, seeded Keras session; a model
    that cannot be built for this input fails here, before anything is logged.

    Dropout is off while pretraining: VICReg would read it as a third, random view and spend the embedding
    on being robust to it (on a toy pool the k-NN accuracy fell from 0.91 to 0.56 with ``dropout: 0.5``
    and rose to 1.0 without). Dropout layers hold no weights, so fine-tuning with dropout loads the same
    layers.
    """
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    return build_model(
        replace(cfg.model, dropout=0.0),
        input_size=cfg.data.crop,
        num_classes=PLACEHOLDER_CLASSES,
        precision=cfg.train.precision,
    )


def pretrain(
    cfg: RunConfig,
    pool: Any,
    settings: PretrainSettings,
    *,
    tracker: Any = None,
    monitor: Any = None,
    checkpoint_dir: Path | None = None,
    budget_s: float | None = None,
    model: Any = None,
) -> PretrainResult:
    """Pretrain ``cfg.model`` (at ``cfg.data.size`` -> ``cfg.data.crop``) on ``pool`` with VICReg.

    ``monitor``: a labelled ``TrainData`` at the same size (k-NN accuracy). ``budget_s``: no epoch starts
    that would end after it (measured on the epochs so far). ``model``: from :func:`build_pretrain_model`
    (built here when None). Returns the platform model holding the
    pretrained backbone and embedding layer, with a placeholder classifier.
    """
    import keras
    import tensorflow as tf

    started = time.perf_counter()

    tracker = tracker if tracker is not None else NullTracker()
    if pool.images.shape[1] != cfg.data.size:
        raise ConfigError(f"the pool is at {pool.images.shape[1]} px but data.size={cfg.data.size}")
    if len(pool.images) < settings.batch_size:
        raise ConfigError(
            f"the pool has {len(pool.images)} images, fewer than one batch of {settings.batch_size}; "
            "give more images or a smaller --batch-size"
        )
    model = model if model is not None else build_pretrain_model(cfg, settings.seed)
    vicreg = build_vicreg(
        model, make_view_fn(cfg.data.size, cfg.data.crop, settings.policy), projector_units=settings.projector_units
    )
    vicreg.compile(optimizer=keras.optimizers.AdamW(settings.learning_rate, weight_decay=1e-4))
    key = run_key(cfg, settings, pool.fingerprint)
    done, history, knn = _load_checkpoint(checkpoint_dir, key, vicreg)
    encoder = embedding_encoder(model)
    if monitor is not None and 0 not in knn:
        knn[0] = knn_accuracy(encoder, monitor, cfg.data.crop)
        log.info("k-NN accuracy of the random initialisation: %.4f", knn[0])
    if 0 in knn:
        tracker.log_metrics({"knn_accuracy": knn[0]}, step=0)
    ds = (
        tf.data.Dataset.from_tensor_slices(pool.images)
        .shuffle(min(len(pool.images), 10_000), seed=settings.seed)
        .batch(settings.batch_size, drop_remainder=True)
        .map(lambda x: tf.cast(x, tf.float32))
        .prefetch(2)
    )
    epoch_s: list[float] = []
    resumed_from = done
    for epoch in range(done + 1, settings.epochs + 1):
        elapsed = time.perf_counter() - started
        if budget_s is not None and epoch_s and elapsed + min(epoch_s) > budget_s:
            log.info("budget: stopping after %d epoch(s) (%.0f s used of %.0f s)", epoch - 1, elapsed, budget_s)
            break
        t0 = time.perf_counter()
        logs = vicreg.fit(ds, epochs=1, verbose=0).history
        epoch_s.append(time.perf_counter() - t0)
        row = {k: float(v[-1]) for k, v in logs.items()}
        history.append(row)
        metrics = {f"pretrain_{k}": v for k, v in row.items()}
        if monitor is not None and (epoch % settings.monitor_every == 0 or epoch == settings.epochs):
            knn[epoch] = knn_accuracy(encoder, monitor, cfg.data.crop)
            metrics["knn_accuracy"] = knn[epoch]
        tracker.log_metrics({**metrics, "epoch_seconds": epoch_s[-1]}, step=epoch)
        log.info(
            "pretrain epoch %d/%d: loss %.4f (invariance %.4f, variance %.4f, covariance %.4f)%s, %.1f s",
            epoch,
            settings.epochs,
            row["loss"],
            row["invariance"],
            row["variance"],
            row["covariance"],
            f", k-NN accuracy {knn[epoch]:.4f}" if epoch in knn else "",
            epoch_s[-1],
        )
        if checkpoint_dir is not None:
            _save_checkpoint(checkpoint_dir, key, vicreg, epoch, history, knn)
    if monitor is not None and len(history) not in knn:
        knn[len(history)] = knn_accuracy(encoder, monitor, cfg.data.crop)
        tracker.log_metrics({"knn_accuracy": knn[len(history)]}, step=len(history))
    meta = {
        "size": cfg.data.size,
        "crop": cfg.data.crop,
        "preprocess_version": PREPROCESS_VERSION,
        "class_names": [],
        "class_slugs": [],
        "num_classes": 0,
        "data_fingerprint": pool.fingerprint,
        "synthetic": bool(pool.synthetic),
        "provenance": "unlabelled pool",
        "tta": False,
        "pretrained": "vicreg",
        "pretrain_epochs": len(history),
        "pool_images": int(len(pool.images)),
        "input": "float32 0..255 centre crop",
        **describe_backbone(cfg.model),
    }
    return PretrainResult(model, history, knn, len(history), resumed_from, time.perf_counter() - started, meta)
