"""One Keras fit: the input pipeline with targeting and augmentation, the optimizer and its schedule,
the validation pass each epoch, early stopping and the best checkpoint (``experiments.training.train``
runs it inside a tracked run)."""

from __future__ import annotations

import functools
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augment.mixing import mix_batch
from augment.policies import augment_batch, build_policy
from core.errors import DataError
from experiments.settings.run import RunConfig, TrainConfig
from experiments.training.evaluation import classification_metrics
from models.head import set_backbone_trainable
from pipelines.dataset import TrainData

log = logging.getLogger(__name__)

#: Called after each epoch with ``(epoch, metrics)``; an exception it raises stops training.
EpochCallback = Callable[[int, Mapping[str, float]], None]

#: Keras' epoch log keys and the MLflow metric each is logged as.
EPOCH_KEYS: dict[str, str] = {
    "loss": "epoch_train_loss",
    "accuracy": "epoch_train_accuracy",
    "val_loss": "epoch_val_loss",
    "val_accuracy": "epoch_val_accuracy",
    "val_balanced_accuracy": "epoch_val_balanced_accuracy",
    "val_macro_f1": "epoch_val_macro_f1",
    "learning_rate": "epoch_learning_rate",
}


def make_augment_fn(cfg: RunConfig) -> Callable[[np.ndarray, int], np.ndarray] | None:
    """``augment_fn(batch, seed)`` of the configured policy, or None for policy ``none``."""
    if cfg.augment.policy == "none":
        return None

    policy = build_policy(cfg.augment.policy, **dict(cfg.augment.strengths))
    return functools.partial(augment_batch, policy)


def make_strategy(distribute: str) -> Any:
    """``tf.distribute.MirroredStrategy`` over every GPU (else every logical CPU device) for ``mirrored``;
    None for ``none`` (Keras' default single-device placement)."""
    if distribute == "none":
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    strategy = tf.distribute.MirroredStrategy(devices=devices)
    log.info("train.distribute=mirrored: %d replicas (%s)", strategy.num_replicas_in_sync, ", ".join(devices))
    return strategy


def make_optimizer(train_cfg: TrainConfig) -> Any:
    """The configured Keras optimizer at the initial learning rate."""
    import keras

    lr = float(train_cfg.learning_rate)
    ema = {"use_ema": True} if train_cfg.ema else {}
    if train_cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, **ema)
    if train_cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=float(train_cfg.weight_decay), **ema)
    return keras.optimizers.SGD(lr, momentum=float(train_cfg.momentum), **ema)


def learning_rate_at(train_cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch`` under the configured schedule."""
    lr = float(train_cfg.learning_rate)
    warm = int(train_cfg.warmup_epochs)
    if epoch < warm:  # linear ramp: lr / (warm + 1), ..., lr * warm / (warm + 1)
        return lr * (epoch + 1) / (warm + 1)
    epoch, epochs = epoch - warm, max(1, train_cfg.epochs - warm)
    if train_cfg.schedule == "cosine":
        return 0.5 * lr * (1.0 + math.cos(math.pi * epoch / epochs))
    if train_cfg.schedule == "step":
        return lr * float(train_cfg.step_factor) ** (epoch // train_cfg.step_epochs)
    return lr


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """``n / (k * n_c)`` per class present (sklearn's 'balanced'); absent classes get 1."""
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return {k: float(w) for k, w in enumerate(weights)}


@dataclass
class FitResult:
    """What :func:`fit` learned: per-epoch history (Keras log names), best epoch, class mixes."""

    history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    class_mixes: list[dict[str, float]]
    seconds: float


def _make_callbacks(
    data: TrainData,
    cfg: RunConfig,
    tracker: Any,
    epoch_callback: EpochCallback | None,
    planners: list,
    checkpoint: Path,
) -> list:
    import keras

    from pipelines.inputs import make_eval_dataset

    train_cfg = cfg.train
    val_ds = make_eval_dataset(data.images, crop=cfg.data.crop, batch_size=256, indices=data.val)
    val_labels = data.labels[data.val]

    class ValidationPass(keras.callbacks.Callback):
        """Scores the whole validation split each epoch and writes val_* into the epoch logs."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            probs = self.model.predict(val_ds, verbose=0)
            m = classification_metrics(val_labels, probs, data.class_slugs)
            if logs is not None:
                logs.update(
                    val_loss=m["log_loss"],
                    val_accuracy=m["accuracy"],
                    val_balanced_accuracy=m["balanced_accuracy"],
                    val_macro_f1=m["macro_f1"],
                )

    class Report(keras.callbacks.Callback):
        """Logs each epoch to the tracker, then calls ``epoch_callback`` (which may raise)."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = dict(logs or {})
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            step = epoch + 1
            metrics = {EPOCH_KEYS[k]: float(v) for k, v in logs.items() if k in EPOCH_KEYS}
            mixes = planners[0].class_mixes if planners else []
            if len(mixes) > epoch:
                metrics.update({f"epoch_mix_{slug}": frac for slug, frac in mixes[epoch].items()})
            if tracker is not None:
                tracker.log_metrics(metrics, step=step)
            log.info(
                "epoch %d/%d: loss %.4f, val_loss %.4f, val_accuracy %.4f, val_balanced_accuracy %.4f",
                step,
                train_cfg.epochs,
                logs.get("loss", float("nan")),
                logs.get("val_loss", float("nan")),
                logs.get("val_accuracy", float("nan")),
                logs.get("val_balanced_accuracy", float("nan")),
            )
            if epoch_callback is not None:
                epoch_callback(step, {k: float(v) for k, v in logs.items() if k != "learning_rate"})

    mode = "min" if train_cfg.monitor == "val_loss" else "max"
    callbacks = [
        ValidationPass(),
        keras.callbacks.LearningRateScheduler(functools.partial(_scheduled_lr, train_cfg)),
        keras.callbacks.ModelCheckpoint(
            str(checkpoint),
            monitor=train_cfg.monitor,
            mode=mode,
            save_best_only=True,
            save_weights_only=True,
            verbose=0,
        ),
    ]
    if train_cfg.patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=train_cfg.monitor, mode=mode, patience=train_cfg.patience, verbose=0)
        )
    callbacks.append(Report())
    return callbacks


def _scheduled_lr(train_cfg: TrainConfig, epoch: int, lr: float) -> float:
    return learning_rate_at(train_cfg, epoch)


def fit(
    model: Any,
    data: TrainData,
    cfg: RunConfig,
    *,
    multipliers: np.ndarray | None = None,
    tracker: Any = None,
    callbacks: Sequence[Any] = (),
    epoch_callback: EpochCallback | None = None,
    verbose: int | str | None = None,
    restore_best: bool = True,
) -> FitResult:
    """Compile and train ``model`` on ``data.train``; restore the best weights on ``train.monitor``
    (``restore_best=False`` keeps the last epoch's: a refit whose validation images are in the training set).

    ``callbacks`` are extra Keras callbacks (run after the validation pass, so they see ``val_*``).
    """
    import keras

    from pipelines.inputs import make_train_dataset

    train_cfg = cfg.train
    soft_labels = train_cfg.label_smoothing > 0 or train_cfg.mixup > 0 or train_cfg.cutmix > 0
    if soft_labels:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=train_cfg.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    planners: list = []
    train_ds = make_train_dataset(
        data.images,
        data.labels,
        batch_size=train_cfg.batch_size,
        crop=cfg.data.crop,
        augment_fn=make_augment_fn(cfg),
        multipliers=multipliers,
        seed=train_cfg.seed,
        indices=data.train,
        planner_out=planners,
        class_slugs=data.class_slugs,
    )
    if soft_labels:
        k = data.num_classes
        train_ds = train_ds.map(lambda x, y: (x, _one_hot(y, k)))
    if train_cfg.mixup > 0 or train_cfg.cutmix > 0:
        train_ds = train_ds.map(
            lambda x, y: mix_batch(x, y, mixup=train_cfg.mixup, cutmix=train_cfg.cutmix, prob=train_cfg.mix_prob)
        )
    class_weight = None
    if train_cfg.class_weights == "balanced":
        class_weight = balanced_class_weights(data.labels[data.train], data.num_classes)
        if multipliers is not None:
            log.warning("class_weights=balanced together with augment.targets weights the targeted classes twice")
    if verbose is None:
        verbose = 1 if sys.stderr.isatty() else 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="galaxy10-ckpt-") as tmp:
        checkpoint = Path(tmp) / "best.weights.h5"
        all_callbacks = _make_callbacks(data, cfg, tracker, epoch_callback, planners, checkpoint)
        all_callbacks[1:1] = list(callbacks)
        hist: dict[str, list[float]] = {}
        # train.freeze_epochs: the head alone first (backbone frozen), then the whole model with a fresh optimizer
        phases = [(0, train_cfg.freeze_epochs, False)] if train_cfg.freeze_epochs else []
        phases.append((train_cfg.freeze_epochs, train_cfg.epochs, True))
        for first, stop, backbone_trains in phases:
            changed = set_backbone_trainable(model, backbone_trains)
            if not backbone_trains:
                log.info("epochs 1-%d: training the head only (%d backbone layers frozen)", stop, changed)
            model.compile(optimizer=make_optimizer(train_cfg), loss=loss, metrics=["accuracy"], jit_compile=False)
            history = model.fit(
                train_ds,
                initial_epoch=first,
                epochs=stop,
                callbacks=all_callbacks,
                class_weight=class_weight,
                shuffle=False,
                verbose=verbose,
            )
            for k, vals in history.history.items():
                hist.setdefault(k, []).extend(float(v) for v in vals)
            if model.stop_training:  # early stopping (logged here: Keras would print it to stdout)
                log.info(
                    "early stopping after epoch %d: %s did not improve for %d epochs",
                    len(hist.get("loss", [])),
                    train_cfg.monitor,
                    train_cfg.patience,
                )
                break
        if restore_best and checkpoint.exists():
            model.load_weights(str(checkpoint))
    series = hist.get(train_cfg.monitor) or []
    if not series:
        raise DataError(f"training produced no {train_cfg.monitor}; the validation split is empty")
    finite = [v if math.isfinite(v) else (math.inf if train_cfg.monitor == "val_loss" else -math.inf) for v in series]
    best = int(np.argmin(finite) if train_cfg.monitor == "val_loss" else np.argmax(finite)) + 1
    mixes = planners[0].class_mixes if planners else []
    return FitResult(
        history=hist,
        best_epoch=best,
        epochs_run=len(series),
        class_mixes=list(mixes),
        seconds=time.perf_counter() - start,
    )


def _one_hot(y: Any, k: int) -> Any:
    import tensorflow as tf

    return tf.one_hot(y, k)
