"""Training on tiny data: learning, logging through a tracker, early stopping, callbacks, test-split guard."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import write_galaxy10_h5

from augment.tta import dihedral_view
from core.errors import ConfigError
from experiments.settings.run import flatten, load_config
from experiments.tracking.base import NullTracker
from experiments.training import (
    TrainData,
    TrainOptions,
    auto_target_recall,
    evaluate,
    load_training_data,
    prepare_run,
    resolve_multipliers,
    train,
)
from experiments.training.fitting import balanced_class_weights, learning_rate_at
from models import build_model
from pipelines.classes import CLASS_SLUGS
from pipelines.preprocess import center_crop

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"
FAST = ["augment.policy=none", "augment.targets=null", "train.learning_rate=3.0e-3", "data.max_images=400"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TrainData:
    """400 tiny 64 px images resized to 48 px in memory (max_images: nothing cached), loaded once."""
    folder = tmp_path_factory.mktemp("train-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("GALAXY10_CACHE", str(folder / "cache"))
        path = write_galaxy10_h5(folder / "learn.h5", n=450, size=64, seed=1)
        return load_training_data(load_config(SMOKE, FAST).data, path)


def test_load_training_data(data):
    assert data.images.shape == (400, 48, 48, 3) and data.images.dtype == np.uint8
    assert max(data.train.max(), data.val.max(), data.test.max()) < 400
    assert not set(data.train) & set(data.val) and not set(data.val) & set(data.test)
    assert data.synthetic and data.provenance == "synthetic" and data.class_slugs == CLASS_SLUGS
    assert "SYNTHETIC" in data.describe()


def test_train_learns_and_logs_everything_but_the_test_split(data):
    cfg = load_config(SMOKE, [*FAST, "train.epochs=6"])
    tracker = NullTracker()
    seen = []
    result = train(
        prepare_run(cfg, data), tracker, TrainOptions(epoch_callback=lambda e, m: seen.append((e, dict(m))), verbose=0)
    )
    # learns: 10 classes, chance is 0.1
    assert result.val_metrics["accuracy"] > 0.25
    # best weights restored: final val log loss is the best epoch's
    hist = result.fit.history
    assert result.best_epoch == int(np.argmin(hist["val_loss"])) + 1
    assert result.val_metrics["log_loss"] == pytest.approx(min(hist["val_loss"]), rel=1e-4)
    # epoch callback: once per epoch, 1-based, with validation metrics
    assert [e for e, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1"} <= set(seen[0][1])
    # tracker: params, tags, per-epoch and final metrics, artifacts; never the test split
    assert tracker.params.items() >= flatten(cfg).items()
    assert tracker.tags["data.synthetic"] == "true" and tracker.tags["data.provenance"] == "synthetic"
    assert tracker.tags["data.fingerprint"] == data.fingerprint and tracker.tags["test_scored"] == "false"
    assert [s for s, _ in tracker.metrics["epoch_val_accuracy"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in tracker.metrics["epoch_mix_disturbed"]] == [1, 2, 3, 4, 5, 6]
    assert tracker.latest("val_recall_disturbed") == result.val_metrics["recall_disturbed"]
    assert tracker.latest("best_epoch") == result.best_epoch
    assert not [k for k in tracker.metrics if k.startswith("test_")]
    assert {
        "config.yaml",
        "class_names.json",
        "confusion_matrix_val.png",
        "per_class_metrics_val.csv",
        "learning_curves.png",
        "history.json",
    } <= set(tracker.artifacts)
    assert not [a for a in tracker.artifacts if "test" in a]
    csv_lines = tracker.artifacts["per_class_metrics_val.csv"].splitlines()
    assert csv_lines[0] == "class,name,recall,precision,support" and len(csv_lines) == 11
    assert tracker.model_meta["size"] == 48 and tracker.model_meta["crop"] == 32
    assert tracker.model_meta["synthetic"] is True and tracker.model_meta["tta"] is False


class Pruned(Exception):
    pass


def test_epoch_callback_exception_stops_training_and_propagates(data):
    cfg = load_config(SMOKE, [*FAST, "train.epochs=5"])
    tracker = NullTracker()

    def prune(epoch, metrics):
        if epoch == 2:
            raise Pruned(f"pruned at {epoch}")

    with pytest.raises(Pruned, match="pruned at 2"):
        train(prepare_run(cfg, data), tracker, TrainOptions(epoch_callback=prune, verbose=0))
    assert [s for s, _ in tracker.metrics["epoch_val_loss"]] == [1, 2]
    assert "val_accuracy" not in tracker.metrics  # no final evaluation after a stop signal


def test_early_stopping_and_scoring_the_test_split(data):
    # a learning rate this small leaves val accuracy unchanged: patience 1 stops after epoch 2
    cfg = load_config(
        SMOKE, [*FAST, "train.epochs=6", "train.learning_rate=1.0e-7", "train.patience=1", "train.monitor=val_accuracy"]
    )
    tracker = NullTracker()
    result = train(prepare_run(cfg, data), tracker, TrainOptions(score_test=True, verbose=0))
    assert result.fit.epochs_run == 2 and result.best_epoch == 1
    assert result.test_metrics is not None and tracker.tags["test_scored"] == "true"
    assert tracker.latest("test_accuracy") == result.test_metrics["accuracy"]
    assert "per_class_metrics_test.csv" in tracker.artifacts


def test_other_options_train(data):
    cfg = load_config(
        SMOKE,
        [
            *FAST[:-1],
            "data.max_images=400",
            "train.epochs=2",
            "train.optimizer=adamw",
            "train.schedule=cosine",
            "train.label_smoothing=0.1",
            "train.class_weights=balanced",
            "train.precision=mixed_bfloat16",
            "model.batch_norm=true",
            "augment.policy=galaxy",
            "augment.targets={disturbed: 2}",
            "augment.tta=true",
        ],
    )
    tracker = NullTracker()
    result = train(prepare_run(cfg, data), tracker, TrainOptions(verbose=0))
    assert all(math.isfinite(v) for v in result.fit.history["loss"])
    lrs = [v for _, v in tracker.metrics["epoch_learning_rate"]]
    assert lrs[0] == pytest.approx(3e-3) and lrs[1] == pytest.approx(1.5e-3, rel=1e-3)  # cosine over 2 epochs
    mix = [v for _, v in tracker.metrics["epoch_mix_disturbed"]]
    assert mix[0] == pytest.approx(2 / 11, abs=0.03)  # disturbed doubled: 2 of 11 parts
    assert tracker.params["multiplier.disturbed"] == "2"
    assert tracker.model_meta["tta"] is True


def test_tta_evaluation_averages_the_eight_views(data):
    model = build_model(load_config(SMOKE).model, input_size=32)
    rows = data.val[:6]
    m = evaluate(model, data, rows, crop=32, tta=True)
    crops = center_crop(np.asarray(data.images[rows]), 32)
    probs = np.mean([model.predict(dihedral_view(crops, j).astype(np.float32), verbose=0) for j in range(8)], axis=0)
    expected = -np.mean(np.log(np.clip(probs[np.arange(6), data.labels[rows]], 1e-7, 1)))
    assert m["log_loss"] == pytest.approx(expected, rel=1e-4)


def test_resolve_multipliers(data):
    cfg = load_config(None, ["augment.targets={cigar: 3}"])
    assert resolve_multipliers(cfg, data)[4] == 3.0
    assert resolve_multipliers(load_config(None), data) is None
    auto = load_config(None, ["augment.targets=auto", "augment.auto_from_run=abc", "augment.max_multiplier=3"])
    with pytest.raises(ConfigError, match="auto"):
        resolve_multipliers(auto, data)
    with pytest.raises(ConfigError, match="auto"):
        prepare_run(auto, data)  # no MLflow to read run abc's recall from
    recall = np.array([0.2, 0.8, 0.9, 0.9, 0.45, 0.9, 0.9, 0.9, 0.9, 0.9])
    asked = []
    prepared = prepare_run(auto, data, recall_lookup=lambda run_id, slugs: asked.append(run_id) or recall)
    measured = auto_target_recall(prepared)
    assert asked == ["abc"] and measured.source == "run abc"
    np.testing.assert_allclose(resolve_multipliers(auto, data, measured), np.clip(0.9 / recall, 1, 3))
    assert auto_target_recall(prepare_run(cfg, data)) is None  # fixed targets measure nothing


def test_targets_use_the_data_class_set(data):
    """Targeting works on any class set: keys are the file's own slugs, names or indices (issue 12)."""
    from dataclasses import replace

    labels = (data.labels % 3).astype(np.int64)
    custom = replace(
        data,
        labels=labels,
        class_names=("Ring", "No ring", "Rare thing"),
        class_slugs=("ring", "no_ring", "rare_thing"),
    )
    m = resolve_multipliers(load_config(None, ["augment.targets={rare_thing: 8, Ring: 2}"]), custom)
    np.testing.assert_allclose(m, [2.0, 1.0, 8.0])
    np.testing.assert_allclose(resolve_multipliers(load_config(None, ["augment.targets={1: 3}"]), custom), [1, 3, 1])
    with pytest.raises(
        ConfigError,
        match=r"unknown class 'disturbed'; this data's classes are: ring, no_ring, "
        r"rare_thing",
    ):
        resolve_multipliers(load_config(None, ["augment.targets={disturbed: 2}"]), custom)
    recall = np.array([0.9, 0.3, 0.6])
    auto = load_config(
        None, ["augment.targets=auto", "augment.auto_from_run=abc", "augment.max_multiplier=8", "augment.auto_top_k=1"]
    )
    measured = auto_target_recall(prepare_run(auto, custom, recall_lookup=lambda run_id, slugs: recall))
    np.testing.assert_allclose(resolve_multipliers(auto, custom, measured), [1.0, 3.0, 1.0])


def test_schedules_and_class_weights():
    base = load_config(None, ["train.learning_rate=0.01", "train.epochs=10"]).train
    from dataclasses import replace

    assert learning_rate_at(base, 7) == 0.01
    cosine = replace(base, schedule="cosine")
    assert learning_rate_at(cosine, 0) == pytest.approx(0.01) and learning_rate_at(cosine, 5) == pytest.approx(0.005)
    step = replace(base, schedule="step", step_epochs=3, step_factor=0.5)
    assert [learning_rate_at(step, e) for e in (0, 2, 3, 6)] == pytest.approx([0.01, 0.01, 0.005, 0.0025])
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0, 2: 1.0})


def test_auto_targets_from_a_warmup(data, monkeypatch: pytest.MonkeyPatch) -> None:
    """``targets: auto`` without a source run measures validation recall in a short warm-up (issue 12)."""
    import experiments.training.run as tr

    cfg = load_config(
        SMOKE, [*FAST, "augment.targets=auto", "augment.auto_warmup_epochs=1", "augment.max_multiplier=5"]
    )
    fits = []
    real_fit = tr.fit
    monkeypatch.setattr(tr, "fit", lambda model, d, c, **kw: fits.append(c) or real_fit(model, d, c, **kw))
    with pytest.raises(ConfigError, match="auto"):
        resolve_multipliers(cfg, data)  # mapping recall to multipliers trains nothing
    assert fits == []
    measured = auto_target_recall(prepare_run(cfg, data))
    assert len(fits) == 1 and fits[0].train.epochs == 1 and fits[0].augment.targets is None
    assert measured.source == "a 1-epoch warm-up" and measured.values.shape == (10,)
    m = resolve_multipliers(cfg, data, measured)
    assert len(fits) == 1
    assert m.shape == (10,) and m.min() == 1.0 and 1.0 <= m.max() <= 5.0


@pytest.mark.parametrize("max_images", ["null", "150"])
def test_train_opens_and_validates_the_data_file_once(
    max_images: str, tiny_h5: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``galaxy10 train`` opens the HDF5 file once and validates it once, on a cold run (no split,
    no image cache: the duplicate scan and the cache read through the same handle) and a warm one."""
    import pipelines.reader as reader
    from experiments.cli import main as cli_main

    opens: list[str] = []
    validations: list[str] = []
    real_open, real_validate = reader._open, reader._validate_open
    monkeypatch.setattr(reader, "_open", lambda p: opens.append(str(p)) or real_open(p))
    monkeypatch.setattr(reader, "_validate_open", lambda p, f: validations.append(str(p)) or real_validate(p, f))
    argv = [
        "-q",
        "train",
        "--config",
        str(SMOKE),
        "--data",
        str(tiny_h5),
        "--set",
        "train.epochs=1",
        "--set",
        f"data.max_images={max_images}",
        "--no-log-model",
    ]
    for run in ("cold", "warm"):
        opens.clear()
        validations.clear()
        assert cli_main(argv) == 0
        assert opens == [str(tiny_h5)], (run, opens)
        assert validations == [str(tiny_h5)], (run, validations)


def test_the_modern_recipe_trains(data) -> None:
    """Issue 14's recipe at once: AdamW, warm-up + cosine, label smoothing, MixUp + CutMix, EMA weights."""
    from experiments.training import prepare_run, train

    cfg = load_config(
        SMOKE,
        [
            *FAST,
            "train.optimizer=adamw",
            "train.schedule=cosine",
            "train.warmup_epochs=1",
            "train.label_smoothing=0.1",
            "train.mixup=0.4",
            "train.cutmix=1.0",
            "train.mix_prob=1.0",
            "train.ema=true",
            "train.epochs=2",
        ],
    )
    result = train(prepare_run(cfg, data), None, TrainOptions(log_model=False, verbose=0))
    assert result.fit.epochs_run == 2 and np.isfinite(result.val_metrics["log_loss"])
    assert result.fit.history["learning_rate"][0] == pytest.approx(cfg.train.learning_rate / 2, rel=1e-4)
