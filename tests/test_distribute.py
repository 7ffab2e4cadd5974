"""``train.distribute: mirrored`` (issue 14) on a CPU split into 2 logical devices: 2 replicas, the same
loss-curve shape as one device, and a best-epoch checkpoint that restores and reloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError
from experiments.settings.run import load_config

ROOT = Path(__file__).resolve().parents[1]

#: Run in a fresh process: logical devices must be configured before TensorFlow starts.
SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from experiments.settings.run import load_config
from experiments.tracking.base import NullTracker
from experiments.training import TrainOptions, evaluate, load_training_data, prepare_run, train
from models.layers import register_custom_layers
data_path, out = sys.argv[1], sys.argv[2]
sets = ["data.size=32", "data.crop=24", "train.epochs=4", "train.batch_size=16", "train.patience=null",
        "augment.policy=none", "model.name=resnet", "model.params={depth: 10, width: 4}", "model.dense_units=8",
        "train.precision=float32", "train.learning_rate=0.003"]
result = {}
for mode in ("none", "mirrored"):
    cfg = load_config(None, [*sets, f"train.distribute={mode}"])
    data = load_training_data(cfg.data, data_path)
    tracker = NullTracker()
    r = train(prepare_run(cfg, data), tracker, TrainOptions(log_model=False, verbose=0))
    losses = [v for _, v in tracker.metrics["epoch_train_loss"]]
    val_losses = [v for _, v in tracker.metrics["epoch_val_loss"]]
    again = evaluate(r.model, data, data.val, crop=cfg.data.crop)
    r.model.save(f"{out}/{mode}.keras")
    register_custom_layers()
    loaded = keras.models.load_model(f"{out}/{mode}.keras", safe_mode=True, compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (4, 24, 24, 3)).astype("float32")
    same = bool(np.allclose(loaded.predict(x, verbose=0), r.model.predict(x, verbose=0), atol=1e-5))
    result[mode] = {"losses": losses, "val_losses": val_losses, "best_epoch": r.fit.best_epoch,
                    "restored_val_loss": float(again["log_loss"]), "reloads": same,
                    "replicas": tracker.tags.get("train.replicas")}
json.dump(result, open(f"{out}/result.json", "w"))
"""


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_one_device(tiny_h5: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_h5), str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    one, two = result["none"], result["mirrored"]
    assert one["replicas"] is None and two["replicas"] == "2"
    # the restored checkpoint is the best epoch's: its validation loss is the best one logged (mirrored: batch
    # norm's moving statistics are read per replica during the epoch, aggregated in the checkpoint)
    for run, rel in ((one, 1e-4), (two, 0.02)):
        assert run["losses"][-1] < run["losses"][0]  # it learns
        assert run["reloads"]
        assert run["restored_val_loss"] == pytest.approx(min(run["val_losses"]), rel=rel)
    # the same loss-curve shape: per-epoch train losses within 15% of one device's
    for a, b in zip(one["losses"], two["losses"]):
        assert abs(a - b) <= 0.15 * a


def test_distribute_is_validated() -> None:
    assert load_config(None, ["train.distribute=mirrored"]).train.distribute == "mirrored"
    with pytest.raises(ConfigError, match="train.distribute='horovod' is not allowed; use one of: none, mirrored"):
        load_config(None, ["train.distribute=horovod"])
