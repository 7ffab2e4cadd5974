"""``galaxy10 self-train``: which images get pseudo-labels, the pool check, a whole round end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError, DataError
from experiments.selftrain.pseudo import refuse_scored_images, select_pseudo_labels

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"


def test_pseudo_labels_skip_out_of_distribution_and_unsure_images_and_balance_the_classes() -> None:
    probs = np.array([[0.95, 0.05], [0.90, 0.10], [0.85, 0.15], [0.55, 0.45], [0.10, 0.90], [0.99, 0.01], [0.20, 0.80]])
    ood = np.array([False, False, False, False, False, True, False])
    p = select_pseudo_labels(probs, ["smooth", "ring"], threshold=0.8, ood_flags=ood)
    assert p.rows.tolist() == [0, 1, 2, 4, 6]  # row 3 unsure, row 5 out-of-distribution
    assert p.labels.tolist() == [0, 0, 0, 1, 1] and (p.n_unsure, p.n_ood) == (1, 1)
    assert p.per_class == {"smooth": 3, "ring": 2}
    capped = select_pseudo_labels(probs, ["smooth", "ring"], threshold=0.8, ood_flags=ood, per_class=2)
    assert capped.rows.tolist() == [0, 1, 4, 6]  # smooth keeps its two most confident
    assert "4 of 7 pool images pseudo-labelled (smooth 2, ring 2)" in capped.describe()
    with pytest.raises(ConfigError, match="--threshold"):
        select_pseudo_labels(probs, ["smooth", "ring"], threshold=1.5)


def textured(n: int, seed: int, size: int = 64, amplitude: float = 120.0) -> np.ndarray:
    """Galaxy-like blobs on smooth random backgrounds: every image its own (no two alike)."""
    from conftest import tiny_images
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    base = tiny_images(rng.integers(0, 10, n), size, seed).astype(np.float64)
    field = gaussian_filter(rng.normal(0, 1, (n, size, size, 3)), sigma=(0, 4, 4, 0)) * amplitude
    return np.clip(base + field + amplitude / 3, 0, 255).astype(np.uint8)


def test_a_pool_holding_a_scored_image_is_refused_even_resampled() -> None:
    from pipelines.preprocess import resize_images

    scored, others = textured(20, 3), textured(20, 4)
    refuse_scored_images(others, scored, what="test split")  # different galaxies: fine
    leaked = np.concatenate([others, resize_images(resize_images(scored[[7]], 47), 64)])
    with pytest.raises(DataError, match=r"holds 1 image\(s\) of the test split \(pool image 20 is one\)"):
        refuse_scored_images(leaked, scored, what="test split")


@pytest.mark.slow
def test_self_training_round_end_to_end(
    smoke_model,
    make_h5,
    tmp_path: Path,
    capsys,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The smoke model teaches; the pool is another tiny file of the same generator; the student learns labels +
    pseudo-labels, its run logs the counts and the pool, it is registered; the labelled file itself as the pool is
    refused with one line. (The toy generator draws every galaxy of a class almost alike, so here only exact
    copies count as the same galaxy; the real threshold is tested above on distinct images.)"""
    from mlflow import MlflowClient

    from experiments.cli import main
    from experiments.selftrain import pseudo

    monkeypatch.setattr(pseudo, "SAME_GALAXY_CORRELATION", 0.9999)
    pool = make_h5(name="pool.h5", n=60, size=64, seed=11)
    common = [
        "--config",
        str(SMOKE),
        "--data",
        str(smoke_model.data_path),
        "--teacher",
        f"{smoke_model.registered_name}@champion",
        "--tracking-uri",
        smoke_model.tracking_uri,
        "--set",
        "train.epochs=1",
    ]
    assert main(["self-train", "--unlabeled", str(pool), *common, "--threshold", "0.05", "--name", "st"]) == 0
    out = capsys.readouterr().out
    assert "round 1 (teacher models:/smoke-study@champion)" in out and "registered as models:/st@student" in out
    client = MlflowClient(smoke_model.tracking_uri)
    version = client.get_model_version_by_alias("st", "student")
    run = client.get_run(version.run_id)
    n = int(run.data.metrics["pseudo_labels"])
    assert 0 < n <= 60 and run.data.tags["selftrain.pool_fingerprint"]
    assert int(run.data.tags["data.n_train"]) > 0
    doc = json.loads(Path(client.download_artifacts(run.info.run_id, "pseudo_labels.json", str(tmp_path))).read_text())
    assert len(doc["pseudo_labels"]["rows"]) == n and doc["pool"]["images"] == 60
    capsys.readouterr()  # MLflow's download progress above
    assert main(["-q", "self-train", "--unlabeled", str(smoke_model.data_path), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must not contain the images a score is computed on" in err[0]
