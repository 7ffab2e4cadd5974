"""Training and evaluation of one CNN run; knows nothing about MLflow or Optuna.

``train(cfg, tracker)`` loads the data once (or takes a :class:`TrainData` a tuning worker loaded),
builds the model, calls :func:`fit`, evaluates the restored best weights on the validation split
(with test-time augmentation if configured), optionally scores the test split, and logs everything
through the ``tracker`` (see ``experiments.tracking.base.Tracker``).

Per epoch, a validation pass scores the whole validation split (accuracy, balanced accuracy,
macro-F1, log loss); early stopping and the best-weights checkpoint watch ``train.monitor``.
``epoch_callback(epoch, metrics)`` is called after every epoch (1-based) with
``{loss, accuracy, val_loss, val_accuracy, val_balanced_accuracy, val_macro_f1}``; an exception it
raises (e.g. a pruning signal) stops training and propagates unchanged, after the tracker has seen
the epochs so far.

Logged metric names: per epoch (``step`` = epoch) ``epoch_train_loss``, ``epoch_train_accuracy``,
``epoch_val_loss``, ``epoch_val_accuracy``, ``epoch_val_balanced_accuracy``, ``epoch_val_macro_f1``,
``epoch_learning_rate``, ``epoch_mix_<slug>`` (class mix of the epoch's samples); once, for the
restored best weights, ``val_<metric>`` (e.g. ``val_recall_disturbed``), ``best_epoch``,
``epochs_run``, and ``test_<metric>`` only when the test split is scored.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from augment.targeting import auto_multipliers, multipliers_from_targets
from core.errors import ConfigError, DataError
from ensembles.calibration import calibration_metrics
from experiments.settings.run import AUTO_TARGETS, DataConfig, RunConfig, flatten, to_yaml
from experiments.tracking.base import NullTracker, git_commit, package_versions
from experiments.training.evaluation import (
    class_recall,
    classification_metrics,
    per_class_csv,
    prefixed,
    scalar_metrics,
)
from experiments.training.figures import confusion_figure, learning_curves_figure
from experiments.training.fitting import EpochCallback, FitResult, fit, make_strategy
from experiments.training.metadata import data_tags, model_metadata
from experiments.training.predict import evaluate, predict_probs
from models import build_model
from models.cost import multiply_adds
from models.precision import native_bfloat16, resolve_precision
from models.registry import backbone_params
from models.weights import (
    APPLICATION_BACKBONES,
    application_weights,
    check_weights_file,
    describe,
    load_weights_file,
    transfer_weights,
)
from pipelines.dataset import TrainData, open_dataset

log = logging.getLogger(__name__)

#: ``recall_lookup(run_id, class_slugs) -> recall``: resolves ``augment.targets: auto``.
RecallLookup = Callable[[str, Sequence[str]], np.ndarray]
#: ``model_loader(ref) -> (keras_model, metadata)``: resolves ``model.init_from`` (an MLflow model reference).
ModelLoader = Callable[[str], tuple[Any, Mapping[str, Any]]]


def load_training_data(
    data_cfg: DataConfig, data_path: str | Path | None = None, *, targets: Mapping[str, float] | str | None = None
) -> TrainData:
    """:func:`pipelines.dataset.open_dataset` with a run's ``data`` config; ``data_path`` overrides ``data.path``.

    Class keys of ``targets`` (``augment.targets``) are checked against the file's own classes right after
    the file is opened, before a split or cache is written.
    """
    check = (lambda classes: multipliers_from_targets(targets, classes)) if isinstance(targets, Mapping) else None
    return open_dataset(
        data_path if data_path is not None else data_cfg.path,
        size=data_cfg.size,
        test_fraction=data_cfg.test_fraction,
        val_fraction=data_cfg.val_fraction,
        split_seed=data_cfg.split_seed,
        max_images=data_cfg.max_images,
        check_classes=check,
    )


def check_start_model(model_cfg: Any, meta: Mapping[str, Any]) -> str:
    """Refuse a ``model.init_from`` model of another backbone (one line naming both); return its description."""
    src_name = str(meta.get("backbone", "reference_cnn"))
    src_desc = f"model {model_cfg.init_from} ({describe(src_name, meta.get('backbone_params') or {})})"
    if src_name != model_cfg.name:
        raise ConfigError(
            f"cannot start {describe(model_cfg.name, backbone_params(model_cfg))} from {src_desc}: "
            f"another backbone; set model.name={src_name} with its params, or pick a model of this "
            "backbone"
        )
    return src_desc


def resolve_multipliers(cfg: RunConfig, data: TrainData, recall: TargetRecall | None = None) -> np.ndarray | None:
    """Per-class oversampling multipliers from ``augment.targets`` (None = no targeting); trains nothing.

    Class keys are resolved against the data's own class set (Galaxy10's slugs on a Galaxy10 file,
    the file's ``class_names`` slugs on an imported one). ``auto`` maps ``recall`` - the measured
    per-class validation recall from :func:`auto_target_recall` - to multipliers;
    ``augment.auto_top_k`` limits the targeting to the weakest k classes.
    """

    targets = cfg.augment.targets
    if targets is None or (isinstance(targets, Mapping) and not targets):
        return None
    if targets != AUTO_TARGETS:
        return multipliers_from_targets(targets, data.class_set)
    if recall is None:
        raise ConfigError(
            "augment.targets=auto needs the classes' measured validation recall (a source run's via "
            "augment.auto_from_run, or a warm-up's); run it through `galaxy10 train`"
        )
    multipliers = auto_multipliers(
        recall.values, max_multiplier=cfg.augment.max_multiplier, classes=data.class_set, top_k=cfg.augment.auto_top_k
    )
    log.info(
        "auto targets from %s (val recall %s): %s",
        recall.source,
        ", ".join(f"{s}={r:.2f}" for s, r in zip(data.class_slugs, recall.values)),
        ", ".join(f"{s}={m:.2f}" for s, m in zip(data.class_slugs, multipliers) if m > 1) or "none",
    )
    return multipliers


class TargetRecall(NamedTuple):
    """Per-class validation recall that ``augment.targets: auto`` targets from, and where it was measured."""

    values: np.ndarray
    source: str


def auto_target_recall(prepared: PreparedRun) -> TargetRecall | None:
    """The recall ``augment.targets: auto`` targets from (None for any other targets): the source run's
    (``augment.auto_from_run``, read by :func:`prepare_run`), else that of a short warm-up training of this
    config without targeting (:func:`warmup_recall`: ``augment.auto_warmup_epochs`` epochs - a whole fit)."""
    cfg, data = prepared.cfg, prepared.data
    if cfg.augment.targets != AUTO_TARGETS:
        return None
    if prepared.source_recall is not None:
        return TargetRecall(prepared.source_recall, f"run {cfg.augment.auto_from_run}")
    return TargetRecall(warmup_recall(cfg, data), f"a {cfg.augment.auto_warmup_epochs}-epoch warm-up")


def warmup_recall(cfg: RunConfig, data: TrainData) -> np.ndarray:
    """Per-class validation recall after ``augment.auto_warmup_epochs`` epochs of this config without targeting.

    The warm-up model is thrown away; only its recall is kept (train and validation splits only).
    """
    import keras

    warm = replace(
        cfg,
        augment=replace(cfg.augment, targets=None, auto_from_run=None),
        train=replace(cfg.train, epochs=int(cfg.augment.auto_warmup_epochs), patience=None),
    )
    log.info("auto targets: %d warm-up epoch(s) without targeting to measure validation recall", warm.train.epochs)
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.train.seed)
    model = build_model(
        warm.model, input_size=cfg.data.crop, num_classes=data.num_classes, precision=warm.train.precision
    )
    fit(model, data, warm, verbose=0)
    probs = predict_probs(model, data, data.val, crop=cfg.data.crop)
    metrics = classification_metrics(data.labels[data.val], probs, data.class_slugs)
    keras.backend.clear_session()
    return class_recall(metrics, class_slugs=data.class_slugs)


@dataclass(frozen=True)
class PreparedRun:
    """A run ready to train: its config and data, and what it takes from outside itself, resolved and checked
    before anything is built or logged - the ``model.weights`` file, the ``model.init_from`` model (with its
    metadata and description) and the validation recall of ``augment.auto_from_run``."""

    cfg: RunConfig
    data: TrainData
    weights: Path | None = None
    start: tuple[Any, Mapping[str, Any], str] | None = None
    source_recall: np.ndarray | None = None


def prepare_run(
    cfg: RunConfig,
    data: TrainData | None = None,
    *,
    data_path: str | Path | None = None,
    recall_lookup: RecallLookup | None = None,
    model_loader: ModelLoader | None = None,
) -> PreparedRun:
    """The one place a run's outside references are resolved (every training path goes through it, inside
    :func:`train` or - to fail before an MLflow run is opened - just before it): the weights file is
    checked, the start model loaded and checked against this backbone, the source run's recall read. ``data``:
    pre-loaded data (tuning workers load once); else loaded from ``data_path`` / ``cfg.data.path``."""
    data = data if data is not None else load_training_data(cfg.data, data_path)
    m = cfg.model
    weights = check_weights_file(m.weights, m.name) if m.weights is not None else None
    start = None
    if m.init_from is not None:
        if model_loader is None:
            raise ConfigError(
                "config key model.init_from needs an MLflow store to load the model from; use "
                "`galaxy10 train` or `galaxy10 tune` (or model.weights with a .keras file)"
            )
        source, meta = model_loader(m.init_from)
        start = (source, meta, check_start_model(m, meta))
    recall = None
    if cfg.augment.targets == AUTO_TARGETS and cfg.augment.auto_from_run:
        if recall_lookup is None:
            raise ConfigError(
                "augment.targets=auto needs the validation recall of run "
                f"{cfg.augment.auto_from_run}; run it through `galaxy10 train` (which reads MLflow)"
            )
        recall = np.asarray(recall_lookup(str(cfg.augment.auto_from_run), data.class_slugs), dtype=np.float64)
    return PreparedRun(cfg, data, weights=weights, start=start, source_recall=recall)


def start_from_weights(model: Any, prepared: PreparedRun) -> list[str]:
    """Copy ``model.weights`` / ``model.init_from`` into the freshly built ``model``; return the layers left fresh.

    ``init_from`` must be a model of the same backbone; its classifier is kept only for the same classes.
    """
    m, data = prepared.cfg.model, prepared.data
    desc = describe(m.name, backbone_params(m))
    if prepared.weights is not None and not (application_weights(m.weights) and m.name in APPLICATION_BACKBONES):
        return load_weights_file(model, prepared.weights, target_desc=desc)
    if prepared.start is None:
        return []
    source, meta, src_desc = prepared.start
    same_classes = list(meta.get("class_names") or []) == list(data.class_names)
    return transfer_weights(model, source, target_desc=desc, source_desc=src_desc, keep_classifier=same_classes)


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# train: one whole run
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """A finished run: the model with its best weights, metrics, and what was logged."""

    model: Any
    fit: FitResult
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    multipliers: np.ndarray | None
    meta: dict[str, Any]
    model_uri: str | None = None
    run_id: str | None = None

    @property
    def best_epoch(self) -> int:
        """1-based epoch whose weights the model holds."""
        return self.fit.best_epoch


def _log_split_report(tracker: Any, split: str, metrics: Mapping[str, Any], data: TrainData) -> None:
    tracker.log_text(per_class_csv(metrics, data.class_slugs, data.class_names), f"per_class_metrics_{split}.csv")
    fig = confusion_figure(metrics["confusion"], data.class_names, title=f"{split} confusion matrix (row-normalised)")
    tracker.log_figure(fig, f"confusion_matrix_{split}.png")
    tracker.log_dict(
        {
            "class_slugs": list(data.class_slugs),
            "confusion": np.asarray(metrics["confusion"]).round(6).tolist(),
            "confusion_counts": np.asarray(metrics["confusion_counts"]).tolist(),
        },
        f"confusion_matrix_{split}.json",
    )


@dataclass(frozen=True)
class TrainOptions:
    """How :func:`train` runs, besides the run itself.

    ``score_test``: score the TEST split too (off by default: model selection never looks at it).
    ``epoch_callback``: called after each epoch; an exception it raises stops training and propagates.
    ``callbacks``: extra Keras callbacks. ``log_model``: log the Keras model with its prediction metadata.
    ``restore_best``: restore the best epoch's weights. ``temperature``: the model's calibration temperature
    (stored in its metadata); None fits it on the validation split - a refit, which trains on the validation
    split, passes its trial's. ``verbose``: Keras' progress output.
    """

    score_test: bool = False
    callbacks: Sequence[Any] = ()
    epoch_callback: EpochCallback | None = None
    log_model: bool = True
    verbose: int | str | None = None
    restore_best: bool = True
    temperature: float | None = None


def train(run: PreparedRun, tracker: Any = None, options: TrainOptions | None = None) -> TrainResult:
    """Run one prepared training (:func:`prepare_run`): model, fit, evaluation, logging through ``tracker``
    (an ``experiments.tracking.base.Tracker``; ``NullTracker`` when None)."""
    import keras

    from pipelines.inputs import cropped_array

    cfg, data, prepared = run.cfg, run.data, run
    opts = options if options is not None else TrainOptions()
    score_test, callbacks, epoch_callback = opts.score_test, opts.callbacks, opts.epoch_callback
    log_model, verbose, restore_best, temperature = opts.log_model, opts.verbose, opts.restore_best, opts.temperature
    tracker = tracker if tracker is not None else NullTracker()
    if data.size != cfg.data.size:
        raise ConfigError(
            f"the loaded data is resized to {data.size} px but data.size={cfg.data.size}; "
            "load the data with this config"
        )
    if data.synthetic:
        log.warning("training on SYNTHETIC data: %s", data.describe())
    else:
        log.info("training on %s", data.describe())
    multipliers = resolve_multipliers(cfg, data, auto_target_recall(prepared))

    tracker.log_params(flatten(cfg))
    tracker.set_tags(
        {
            **data_tags(data),
            **git_commit(),
            **package_versions(),
            "augment.targeted": "true" if multipliers is not None else "false",
            "test_scored": "true" if score_test else "false",
        }
    )
    if multipliers is not None:
        tracker.log_params({f"multiplier.{s}": f"{m:.4g}" for s, m in zip(data.class_slugs, multipliers)})
    tracker.log_text(to_yaml(cfg), "config.yaml")
    tracker.log_dict({"class_names": list(data.class_names), "class_slugs": list(data.class_slugs)}, "class_names.json")

    if cfg.train.precision == "auto":
        log.info("precision auto -> %s: %s", resolve_precision("auto"), native_bfloat16()[1])
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.train.seed)
    strategy = make_strategy(cfg.train.distribute)
    if strategy is not None:
        tracker.set_tags({"train.replicas": strategy.num_replicas_in_sync})
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(
            cfg.model, input_size=cfg.data.crop, num_classes=data.num_classes, precision=cfg.train.precision
        )
        tracker.log_params(
            {
                "model.parameters": model.count_params(),
                "model.multiply_adds": multiply_adds(model),
                "train.precision_resolved": resolve_precision(cfg.train.precision),
            }
        )
        start_from_weights(model, prepared)
        fitted = fit(
            model,
            data,
            cfg,
            multipliers=multipliers,
            tracker=tracker,
            callbacks=callbacks,
            epoch_callback=epoch_callback,
            verbose=verbose,
            restore_best=restore_best,
        )

    val_probs = predict_probs(model, data, data.val, crop=cfg.data.crop, tta=cfg.augment.tta)
    val_metrics = classification_metrics(data.labels[data.val], val_probs, data.class_slugs)
    # temperature scaling fitted on the validation split (held out from training), unless given
    calibration = calibration_metrics(val_probs, data.labels[data.val], temperature)
    temperature = calibration["temperature"]
    tracker.log_metrics(
        {
            **prefixed(val_metrics, "val"),
            "best_epoch": fitted.best_epoch,
            "epochs_run": fitted.epochs_run,
            "train_seconds": fitted.seconds,
            **calibration,
        },
        step=fitted.best_epoch,
    )
    _log_split_report(tracker, "val", val_metrics, data)
    fig = learning_curves_figure(fitted.history, best_epoch=fitted.best_epoch)
    tracker.log_figure(fig, "learning_curves.png")
    tracker.log_dict(
        {"history": fitted.history, "best_epoch": fitted.best_epoch, "class_mix_per_epoch": fitted.class_mixes},
        "history.json",
    )
    test_metrics = None
    if score_test:
        if len(data.test) == 0:
            raise DataError("--score-test was given but the test split is empty; use more images")
        test_metrics = evaluate(model, data, data.test, crop=cfg.data.crop, tta=cfg.augment.tta)
        tracker.log_metrics(prefixed(test_metrics, "test"), step=fitted.best_epoch)
        _log_split_report(tracker, "test", test_metrics, data)
    meta = model_metadata(cfg, data)
    meta.update(
        best_epoch=fitted.best_epoch,
        val_accuracy=round(float(val_metrics["accuracy"]), 6),
        run_id=getattr(tracker, "run_id", None),
        temperature=round(float(temperature), 6),
    )
    model_uri = None
    if log_model:
        example = cropped_array(data.images, cfg.data.crop, data.val[:1]).astype(np.float32)
        model_uri = tracker.log_keras_model(model, meta=meta, input_example=example)
    log.info(
        "val: accuracy %.4f, balanced accuracy %.4f, macro-F1 %.4f (best epoch %d of %d%s)",
        val_metrics["accuracy"],
        val_metrics["balanced_accuracy"],
        val_metrics["macro_f1"],
        fitted.best_epoch,
        fitted.epochs_run,
        ", TTA" if cfg.augment.tta else "",
    )
    return TrainResult(
        model=model,
        fit=fitted,
        val_metrics=val_metrics,
        test_metrics=test_metrics,
        multipliers=multipliers,
        meta=meta,
        model_uri=model_uri,
        run_id=getattr(tracker, "run_id", None),
    )


def summary(result: TrainResult) -> dict[str, Any]:
    """JSON-ready summary of a run (scalar metrics, best epoch, model URI)."""
    out: dict[str, Any] = {
        "run_id": result.run_id,
        "model_uri": result.model_uri,
        "best_epoch": result.best_epoch,
        "epochs_run": result.fit.epochs_run,
        "synthetic": result.meta.get("synthetic"),
        "provenance": result.meta.get("provenance"),
        "val": scalar_metrics(result.val_metrics),
    }
    if result.test_metrics is not None:
        out["test"] = scalar_metrics(result.test_metrics)
    return json.loads(json.dumps(out))


__all__ = [
    "TrainData",
    "TrainResult",
    "FitResult",
    "load_training_data",
    "fit",
    "train",
    "evaluate",
    "predict_probs",
    "resolve_multipliers",
    "auto_target_recall",
    "TargetRecall",
    "model_metadata",
    "summary",
]
