"""Unit tests of ensembles/: second stages, config validation, cross-fitting bookkeeping, voting,
stacking, the embedding transformer and its cache, and the saved ensemble round trip."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.errors import ConfigError, DataError, ModelError
from ensembles import second_stage as ss
from ensembles.crossfit import Fold, FoldRecord, check_records, crossfit, cv_predict_proba, cv_splits, make_folds
from ensembles.stacking import BlendMeta, fit_meta, meta_predict, nested_cv_stack
from ensembles.voting import cv_weighted_vote, fit_vote_weights, soft_vote
from experiments.settings.ensemble import balanced_second_stages, config_from_dict, prior_twins, read_config_yaml

ROOT = Path(__file__).resolve().parents[1]
ENSEMBLE_YAML = ROOT / "experiments" / "configs" / "ensemble.yaml"


def blobs(n: int = 300, d: int = 16, k: int = 4, seed: int = 0, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian class blobs: features ``(n, d)`` float32 and labels ``0..k-1``."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.normal(0, 3, (k, d))
    return (centres[y] + rng.normal(0, spread, (n, d))).astype(np.float32), y


# --------------------------------------------------------------------------------------------
# Second-stage models
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ss.MODEL_NAMES)
def test_every_second_stage_learns_and_round_trips(name: str, tmp_path: Path) -> None:
    X, y = blobs(seed=1)
    params = (
        {"n_estimators": 30}
        if name in ("xgboost", "random_forest", "extra_trees")
        else {"max_iter": 30}
        if name == "hist_gb"
        else {}
    )
    est = ss.make_second_stage(name, params, seed=0, n_jobs=1).fit(X[:200], y[:200])
    probs = ss.full_proba(est, X[200:], 4)
    assert probs.shape == (100, 4) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean(probs.argmax(axis=1) == y[200:]) > 0.8  # well-separated blobs
    spec = ss.save_second_stage(est, tmp_path, "m")
    assert (tmp_path / spec["file"]).suffix == (".json" if name == "xgboost" else ".joblib")
    again = ss.load_second_stage(spec, tmp_path)
    np.testing.assert_allclose(ss.full_proba(again, X[200:], 4), probs, rtol=1e-6, atol=1e-7)


def test_xgboost_copes_with_a_missing_class_and_reports_all_columns() -> None:
    X, y = blobs(k=5, seed=2)
    keep = y != 2  # class 2 absent from the fit, as in a small fold
    est = ss.make_second_stage("xgboost", {"n_estimators": 10}, n_jobs=1).fit(X[keep], y[keep])
    assert list(est.classes_) == [0, 1, 3, 4]
    probs = ss.full_proba(est, X, 5)
    assert probs.shape == (len(X), 5) and np.all(probs[:, 2] == 0)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_scale_sensitive_models_get_a_scaler() -> None:
    for name in ("logreg", "svm", "knn"):
        assert [s for s, _ in ss.make_second_stage(name).steps] == ["scale", "model"]
    assert not hasattr(ss.make_second_stage("random_forest"), "steps")


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def test_shipped_ensemble_config_loads() -> None:
    from experiments.ensembling.second_stage_tuning import validate_config

    cfg = config_from_dict(read_config_yaml(ENSEMBLE_YAML))
    validate_config(cfg)
    assert cfg.mode in ("crossfit", "val_cv")
    assert set(cfg.stack.second_stage) <= set(cfg.second_stage)
    assert cfg.second_stage["xgboost"]["max_bin"] == 64  # YAML value over the default
    assert cfg.second_stage["xgboost"]["subsample"] == ss.DEFAULT_PARAMS["xgboost"]["subsample"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"modes": "crossfit"},
            "unknown config key modes; allowed top-level keys: mode, seed, select_metric, class_weights, "
            "prior_correction, accuracy_guard, guard_metrics, guard_margin, confidence, oof_selection, cv_folds, n_jobs, "
            "alias, pretrained, crossfit, embeddings, vote, second_stage, stack, tune",
        ),
        ({"mode": "bagging"}, "config key mode='bagging' is not allowed; use one of: crossfit, val_cv"),
        ({"accuracy_guard": "yes"}, "config key accuracy_guard='yes'"),
        ({"oof_selection": 1}, "config key oof_selection=1"),
        ({"crossfit": {"fold": 3}}, "unknown config key crossfit.fold; allowed keys in crossfit: folds, epochs"),
        ({"crossfit": {"folds": 1}}, "config key crossfit.folds=1 is not allowed; give an integer in [2, 20]"),
        (
            {"second_stage": {"catboost": {}}},
            "unknown config key second_stage.catboost; second-stage models: logreg, xgboost, hist_gb, random_forest, "
            "extra_trees, svm, knn",
        ),
        (
            {"second_stage": {"logreg": {"C": -1}}},
            "config key second_stage.logreg.C=-1 is not allowed: it must be a float in the range (0.0, inf]",
        ),
        (
            {"second_stage": {"knn": {"n_jobs": 3}}},
            "config key second_stage.knn.n_jobs is set by the platform; remove it",
        ),
        (
            {"stack": {"second_stage": ["svm"]}},
            "config key stack.second_stage names 'svm', which is not configured under second_stage; add it there "
            "(configured: logreg, xgboost) or remove it",
        ),
        (
            {"vote": {"weighted": "median"}},
            "config key vote.weighted='median' is not allowed; use one of: log_loss, accuracy or null",
        ),
        ({"tune": {"n_trials": 3}}, "config key tune.n_trials > 0 needs tune.search_space"),
    ],
)
def test_bad_ensemble_config_names_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_unknown_xgboost_key_lists_the_allowed_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^unknown config key second_stage\.xgboost\.max_dept; allowed keys for "
        r"xgboost: .*max_depth",
    ):
        config_from_dict({"second_stage": {"xgboost": {"max_dept": 3}}})


def test_tuning_space_keys_are_checked_against_the_models() -> None:
    from experiments.ensembling.second_stage_tuning import validate_config

    cfg = config_from_dict(
        {
            "second_stage": {"xgboost": {}},
            "tune": {"n_trials": 2, "search_space": {"xgboost.depth": {"type": "int", "low": 2, "high": 4}}},
        }
    )
    with pytest.raises(ConfigError, match=r"^unknown config key tune\.search_space\.xgboost\.depth; allowed keys"):
        validate_config(cfg)
    cfg = config_from_dict(
        {
            "second_stage": {"xgboost": {}},
            "tune": {"n_trials": 2, "search_space": {"svm.C": {"type": "float", "low": 0.1, "high": 1.0}}},
        }
    )
    with pytest.raises(
        ConfigError,
        match=r"tune\.search_space\.svm\.C must be <model>\.<param> with a model "
        r"configured under second_stage \(xgboost\)",
    ):
        validate_config(cfg)


# --------------------------------------------------------------------------------------------
# Cross-fitting bookkeeping
# --------------------------------------------------------------------------------------------
def test_folds_are_disjoint_and_cover_the_training_indices() -> None:
    rng = np.random.default_rng(0)
    indices = np.sort(rng.choice(1000, 300, replace=False))
    labels = rng.integers(0, 10, 300)
    folds = make_folds(indices, labels, 3, seed=0)
    held = np.concatenate([f.heldout for f in folds])
    assert np.array_equal(np.sort(held), indices)  # every index held out exactly once
    for f in folds:
        assert np.intersect1d(f.train, f.heldout).size == 0
        assert np.array_equal(np.sort(np.concatenate([f.train, f.heldout])), indices)
    assert make_folds(indices, labels, 3, seed=0)[1].heldout.tolist() == folds[1].heldout.tolist()  # seeded


def test_crossfit_collects_out_of_fold_rows_in_index_order() -> None:
    indices = np.arange(10, 70)
    labels = indices % 3
    folds = make_folds(indices, labels, 3, seed=1)

    def train_fold(fold: Fold) -> tuple[int, np.ndarray]:
        return fold.number, fold.train

    def embed_fold(model: int, fold: Fold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        emb = np.stack([fold.heldout, np.full(len(fold.heldout), model)], axis=1).astype(np.float32)
        return fold.heldout, emb, np.ones((len(fold.heldout), 3)) / 3

    oof = crossfit(folds, indices, train_fold, embed_fold)
    assert np.array_equal(oof.embeddings[:, 0], indices)  # row i belongs to image indices[i]
    assert np.array_equal(oof.embeddings[:, 1], oof.fold_of)  # embedded by the fold that held it out
    for rec in oof.records:
        assert np.intersect1d(rec.trained_on, rec.embedded).size == 0
    assert oof.models == [0, 1, 2]


def test_crossfit_refuses_a_fold_that_embeds_its_own_training_images() -> None:
    indices = np.arange(40)
    folds = make_folds(indices, indices % 2, 2, seed=0)

    def leaky_train(fold: Fold) -> tuple[None, np.ndarray]:
        return None, np.concatenate([fold.train, fold.heldout[:1]])  # trained on one held-out image

    def embed_fold(model: None, fold: Fold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return fold.heldout, np.zeros((len(fold.heldout), 2)), np.zeros((len(fold.heldout), 2))

    with pytest.raises(DataError, match=r"^cross-fitting fold 0 embedded 1 image\(s\) it was trained on"):
        crossfit(folds, indices, leaky_train, embed_fold)


def test_check_records_catches_double_and_missing_embeddings() -> None:
    a, b = np.arange(0, 5), np.arange(5, 10)
    check_records([FoldRecord(0, b, a), FoldRecord(1, a, b)], np.arange(10))
    with pytest.raises(DataError, match=r"\(2 embedded more than once\)"):
        check_records([FoldRecord(0, b, a), FoldRecord(1, a[:3], np.r_[b, a[3:]])], np.arange(10))
    with pytest.raises(DataError, match=r"\(1 never embedded\)"):
        check_records([FoldRecord(0, b, a), FoldRecord(1, a, b[:-1])], np.arange(10))


def test_cv_predict_proba_scores_every_row_out_of_fold() -> None:
    X, y = blobs(n=120, k=3, seed=3)
    splits = cv_splits(y, 4, seed=0)
    for fit_rows, score_rows in splits:
        assert np.intersect1d(fit_rows, score_rows).size == 0
    probs = cv_predict_proba(lambda: ss.make_second_stage("logreg"), X, y, 3, splits)
    assert probs.shape == (120, 3) and np.mean(probs.argmax(axis=1) == y) > 0.9
    with pytest.raises(DataError, match="cross-validation needs at least 4 images"):
        cv_splits(np.arange(3), 5)


@pytest.mark.parametrize("name", sorted(ss.WEIGHTABLE))
def test_balanced_second_stages_find_more_of_a_rare_overlapping_class(name: str) -> None:
    """A rare class overlapping a common one: weighting the classes raises its recall (the test can fail:
    unweighted, most rare points are called common)."""
    rng = np.random.default_rng(0)
    common, rare = rng.normal(0.0, 1.0, (600, 2)), rng.normal(1.2, 1.0, (40, 2))
    X = np.concatenate([common, rare]).astype(np.float32)
    y = np.r_[np.zeros(600, np.int64), np.ones(40, np.int64)]
    fresh_rare = rng.normal(1.2, 1.0, (400, 2)).astype(np.float32)  # scored on new draws, not the fit rows
    # forests with pure leaves barely feel class weights; leaves of 10+ images do
    params = (
        {"n_estimators": 60}
        if name == "xgboost"
        else {"n_estimators": 60, "min_samples_leaf": 10}
        if name in ("random_forest", "extra_trees")
        else {}
    )
    recall = {}
    for balanced in (False, True):
        est = ss.make_second_stage(name, params, balanced=balanced).fit(X, y)
        recall[balanced] = float((est.predict(fresh_rare) == 1).mean())
    assert recall[True] > recall[False] + 0.2, recall


def test_class_weights_config_and_knn() -> None:
    assert config_from_dict({}).class_weights == "none"
    cfg = config_from_dict({"class_weights": "auto"})
    assert balanced_second_stages(cfg, "balanced_accuracy") and balanced_second_stages(cfg, "macro_f1")
    assert not balanced_second_stages(cfg, "accuracy")
    assert balanced_second_stages(config_from_dict({"class_weights": "balanced"}), "accuracy")
    assert not balanced_second_stages(config_from_dict({"class_weights": "none"}), "balanced_accuracy")
    with pytest.raises(ConfigError, match="class_weights"):
        config_from_dict({"class_weights": "inverse"})
    with pytest.raises(ConfigError, match="knn cannot weight classes"):
        config_from_dict({"class_weights": "balanced", "second_stage": {"knn": {}}})
    with pytest.raises(ConfigError, match="knn cannot weight classes"):
        ss.make_second_stage("knn", balanced=True)
    assert config_from_dict({}).prior_correction == "auto"
    auto = config_from_dict({})
    assert (
        prior_twins(auto, "balanced_accuracy") and prior_twins(auto, "macro_f1") and not prior_twins(auto, "accuracy")
    )
    assert prior_twins(config_from_dict({"prior_correction": True}), "accuracy")
    assert not prior_twins(config_from_dict({"prior_correction": False}), "balanced_accuracy")
    with pytest.raises(ConfigError, match="prior_correction='yes' is not allowed; use auto, true or false"):
        config_from_dict({"prior_correction": "yes"})
    # a user's own class_weight wins over the platform's
    est = ss.make_second_stage("logreg", {"class_weight": {0: 1.0, 1: 3.0}}, balanced=True)
    assert est.named_steps["model"].class_weight == {0: 1.0, 1: 3.0}


# --------------------------------------------------------------------------------------------
# Voting and stacking
# --------------------------------------------------------------------------------------------
def _member_probs(y: np.ndarray, k: int, quality: float, seed: int) -> np.ndarray:
    """Probabilities that put ``quality`` extra mass on the true class (0 = pure noise)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), len(y))
    p[np.arange(len(y)), y] += quality
    return p / p.sum(axis=1, keepdims=True)


def test_soft_vote_is_the_mean_and_checks_weights() -> None:
    a, b = np.array([[0.8, 0.2]]), np.array([[0.4, 0.6]])
    np.testing.assert_allclose(soft_vote([a, b]), [[0.6, 0.4]])
    np.testing.assert_allclose(soft_vote([a, b], [0.25, 0.75]), [[0.5, 0.5]])
    with pytest.raises(DataError, match="vote weights must be 2 non-negative numbers summing to 1"):
        soft_vote([a, b], [0.5, 0.6])


def test_log_loss_weights_favour_the_informative_member() -> None:
    y = np.arange(400) % 5
    good, noise = _member_probs(y, 5, 2.0, 0), _member_probs(y, 5, 0.0, 1)
    w = fit_vote_weights([noise, good], y, method="log_loss")
    assert w.shape == (2,) and np.isclose(w.sum(), 1.0) and w[1] > 0.8
    acc_w = fit_vote_weights([noise, good], y, method="accuracy")
    assert acc_w[1] > acc_w[0]
    oof, per_split = cv_weighted_vote([noise, good], y, cv_splits(y, 4), method="log_loss")
    assert per_split.shape == (4, 2) and np.all(per_split[:, 1] > 0.8)
    assert oof.shape == good.shape and np.allclose(oof.sum(axis=1), 1.0)


@pytest.mark.parametrize("kind", ["blend", "logistic"])
def test_nested_stack_beats_its_weak_cnn_input(kind: str) -> None:
    X, y = blobs(n=200, d=8, k=4, seed=5, spread=1.5)
    weak_cnn = _member_probs(y, 4, 0.3, 2)
    make = lambda: ss.make_second_stage("logreg")  # noqa: E731
    probs = nested_cv_stack(weak_cnn, X, y, make, 4, cv_splits(y, 4), inner_folds=3, kind=kind)
    assert probs.shape == (200, 4) and np.allclose(probs.sum(axis=1), 1.0)
    assert np.mean(probs.argmax(axis=1) == y) > np.mean(weak_cnn.argmax(axis=1) == y) + 0.2
    meta = fit_meta([weak_cnn, probs], y)
    assert meta_predict(meta, [weak_cnn, probs], 4).shape == (200, 4)


def test_blend_weight_follows_the_better_input_and_contains_both() -> None:
    y = np.random.default_rng(0).integers(0, 5, 400)
    good, noise = _member_probs(y, 5, 2.0, 0), _member_probs(y, 5, 0.0, 1)
    meta = fit_meta([noise, good], y, kind="blend")
    assert isinstance(meta, BlendMeta) and meta.weight_ <= 0.1  # little weight on the noise (the first block)
    assert fit_meta([good, noise], y, kind="blend").weight_ >= 0.9
    p = meta_predict(meta, [noise, good], 5)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.mean(p.argmax(1) == y) >= np.mean(good.argmax(1) == y) - 0.01
    same = fit_meta([good, good], y, kind="blend")  # equal inputs: the blend is the input itself
    np.testing.assert_allclose(
        meta_predict(same, [good, good], 5),
        np.clip(good, 1e-6, 1) / np.clip(good, 1e-6, 1).sum(1, keepdims=True),
        atol=1e-9,
    )
    with pytest.raises(DataError, match="two"):
        BlendMeta().fit(np.zeros((4, 5)), np.zeros(4))
    with pytest.raises(DataError, match="meta-learner"):
        fit_meta([good, good], y, kind="forest")


def test_ensemble_config_checks_stack_meta() -> None:
    assert config_from_dict({}).stack.meta == "logistic"
    assert config_from_dict(read_config_yaml(ENSEMBLE_YAML)).stack.meta == "logistic"
    assert config_from_dict({"stack": {"meta": "blend"}}).stack.meta == "blend"
    with pytest.raises(ConfigError, match="stack.meta"):
        config_from_dict({"stack": {"meta": "ridge"}})


# --------------------------------------------------------------------------------------------
# Embeddings and the saved ensemble
# --------------------------------------------------------------------------------------------
def _tiny_cnn(seed: int = 0):  # noqa: ANN202 - a keras.Model
    import keras

    from experiments.settings.run import ModelConfig
    from models import build_model

    keras.utils.set_random_seed(seed)
    return build_model(ModelConfig(filters=(4, 8), dense_units=12, dropout=0.0), input_size=32)


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_embedder_follows_sklearn_manners_and_returns_the_embedding_layer() -> None:
    import keras
    from sklearn.base import clone

    from ensembles.embeddings import CNNEmbedder

    model = _tiny_cnn()
    embedder = CNNEmbedder(model, batch_size=7, model_id="run-a")
    assert not hasattr(embedder, "n_features_out_")  # __init__ only stores parameters
    assert embedder.get_params()["batch_size"] == 7 and clone(embedder, safe=False).model_id == "run-a"
    assert embedder.fit() is embedder
    assert (embedder.input_size_, embedder.n_features_out_) == (32, 12)
    images = _images(20, 48)
    X = embedder.transform(images)
    reference = keras.Model(model.input, model.get_layer("embedding").output)
    from pipelines.preprocess import center_crop

    expected = np.asarray(reference.predict(center_crop(images, 32).astype(np.float32), verbose=0))
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-5)
    assert list(embedder.get_feature_names_out()[:2]) == ["embedding0", "embedding1"]


def test_embedding_cache_is_reused_and_keyed(tmp_path: Path) -> None:
    from ensembles.embeddings import CNNEmbedder, default_embedding_cache

    images = _images(30, 40)
    rows = np.arange(3, 25)
    first = CNNEmbedder(_tiny_cnn(0), model_id="run-x").fit()
    a = first.embed(images, rows, split="val", data_fingerprint="f" * 64)
    assert not a.cached and first.cache_misses_ == 1
    files = sorted(default_embedding_cache().rglob("*.npz"))
    assert len(files) == 1 and files[0].is_relative_to(tmp_path / "cache" / "embeddings" / "run-x")
    # Same run id, different weights: the cache is keyed by the run id, so it must serve the stored values.
    second = CNNEmbedder(_tiny_cnn(1), model_id="run-x").fit()
    b = second.embed(images, rows, split="val", data_fingerprint="f" * 64)
    assert b.cached and second.cache_hits_ == 1 and second.cache_misses_ == 0
    np.testing.assert_array_equal(b.embeddings, a.embeddings)
    np.testing.assert_array_equal(b.probs, a.probs)
    fresh = CNNEmbedder(_tiny_cnn(1), model_id="run-x", cache_dir=False).fit()
    assert not np.allclose(fresh.embed(images, rows, split="val", data_fingerprint="f" * 64).embeddings, a.embeddings)
    # Another split name, fingerprint, row set or TTA flag is another entry.
    for kwargs, emb in (
        ({"split": "train-fold0", "data_fingerprint": "f" * 64}, second),
        ({"split": "val", "data_fingerprint": "e" * 64}, second),
        ({"split": "val", "data_fingerprint": "f" * 64}, CNNEmbedder(_tiny_cnn(1), model_id="run-x", tta=True).fit()),
    ):
        assert not emb.embed(images, rows, **kwargs).cached
    assert not second.embed(images, rows[:-1], split="val", data_fingerprint="f" * 64).cached
    assert len(list(default_embedding_cache().rglob("*.npz"))) == 5
    assert not list(default_embedding_cache().rglob("*.tmp"))  # written atomically


def test_corrupt_cache_entry_is_recomputed(caplog: pytest.LogCaptureFixture) -> None:
    from ensembles.embeddings import CNNEmbedder, default_embedding_cache

    images = _images(8, 32)
    emb = CNNEmbedder(_tiny_cnn(), model_id="run-c").fit()
    good = emb.embed(images, split="val", data_fingerprint="abc")
    path = next(default_embedding_cache().rglob("*.npz"))
    path.write_bytes(b"not a numpy file")
    again = emb.embed(images, split="val", data_fingerprint="abc")
    assert not again.cached and "unreadable" in caplog.text
    np.testing.assert_allclose(again.embeddings, good.embeddings, rtol=1e-6)


def test_tta_embeddings_are_invariant_to_a_quarter_turn() -> None:
    from ensembles.embeddings import CNNEmbedder

    images = _images(6, 32, seed=4)
    emb = CNNEmbedder(_tiny_cnn(), tta=True, cache_dir=False).fit()
    plain = CNNEmbedder(_tiny_cnn(), tta=False, cache_dir=False).fit()
    turned = np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2)))
    np.testing.assert_allclose(emb.transform(turned), emb.transform(images), rtol=1e-4, atol=1e-5)
    assert not np.allclose(plain.transform(turned), plain.transform(images), atol=1e-5)


def test_saved_ensemble_predicts_the_same_from_raw_images(tmp_path: Path) -> None:
    from ensembles.embeddings import CNNEmbedder
    from ensembles.ensemble_model import Branch, EnsembleModel, load_ensemble, save_ensemble
    from pipelines.classes import CLASS_NAMES, CLASS_SLUGS
    from pipelines.preprocess import prepare_images

    cnn_a, cnn_b = _tiny_cnn(0), _tiny_cnn(1)
    train_imgs = _images(60, 48, seed=2)
    y = np.arange(60) % 10
    emb = CNNEmbedder(cnn_a, cache_dir=False).fit().embed(train_imgs, split="x", data_fingerprint="x")
    xgb = ss.make_second_stage("xgboost", {"n_estimators": 5}, n_jobs=1).fit(emb.embeddings, y)
    meta = fit_meta([emb.probs, ss.full_proba(xgb, emb.embeddings, 10)], y)
    model = EnsembleModel(
        "stack",
        [
            Branch(cnn_a, 48, 32, False, second=xgb, meta=meta, name="a"),
            Branch(cnn_b, 40, 32, True, second=xgb, meta=meta, name="b"),
        ],
        CLASS_NAMES,
        CLASS_SLUGS,
        weights=[0.3, 0.7],
    )
    raw = _images(5, 256, seed=3)
    probs = model.predict_proba(raw)
    assert probs.shape == (5, 10) and probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # the branch path is exactly: prepare_images -> CNN -> xgboost on embeddings -> meta-learner
    crops = prepare_images(raw, size=48, crop=32)
    e = CNNEmbedder(cnn_a, cache_dir=False).fit().embed(crops, split="y", data_fingerprint="y")
    branch_a = meta_predict(meta, [e.probs, ss.full_proba(xgb, e.embeddings, 10)], 10)
    assert not np.allclose(probs, branch_a, atol=1e-4)  # branch b contributes
    folder = save_ensemble(model, tmp_path / "ens")
    assert sorted(p.name for p in folder.iterdir()) == [
        "cnn_0.keras",
        "cnn_1.keras",
        "ensemble.json",
        "meta_0.joblib",
        "meta_1.joblib",
        "second_0.json",
        "second_1.json",
    ]
    again = load_ensemble(folder)
    assert again.kind == "stack" and again.members() == ["a", "b"]
    np.testing.assert_allclose(again.predict_proba(raw), probs, rtol=1e-5, atol=1e-6)
    one = EnsembleModel("stack", [model.branches[0]], CLASS_NAMES, CLASS_SLUGS)
    np.testing.assert_allclose(one.predict_proba(raw), branch_a, rtol=1e-5, atol=1e-6)
    # prior correction: the output divided by the class shares, renormalised; saved and reloaded
    prior = np.r_[np.full(5, 3.0), np.full(5, 1.0)]
    corrected = EnsembleModel("stack", model.branches, CLASS_NAMES, CLASS_SLUGS, weights=[0.3, 0.7], class_prior=prior)
    expected = probs / (prior / prior.sum())
    expected /= expected.sum(axis=1, keepdims=True)
    got = corrected.predict_proba(raw)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert got[:, 5:].sum() > probs[:, 5:].sum()  # the rarer classes gain
    folder2 = save_ensemble(corrected, tmp_path / "ens_prior")
    np.testing.assert_allclose(load_ensemble(folder2).predict_proba(raw), got, rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match="10 positive numbers"):
        EnsembleModel("stack", model.branches, CLASS_NAMES, CLASS_SLUGS, class_prior=np.zeros(10))
    # an ensemble saved before class priors existed (format 1) still loads, without one
    doc = json.loads((folder / "ensemble.json").read_text())
    doc["format_version"] = 1
    doc.pop("class_prior")
    (folder / "ensemble.json").write_text(json.dumps(doc))
    assert load_ensemble(folder).class_prior is None
    # the model code of pyfunc ensembles logged before ensembles.serving became ensembles.ensemble_model
    # imports the old name: it must still load and predict
    from experiments.tracking.pyfunc import ENSEMBLE_MODEL_CODE

    assert "from ensembles.ensemble_model import load_ensemble" in ENSEMBLE_MODEL_CODE
    old_code = tmp_path / "old_galaxy10_ensemble_model.py"
    old_code.write_text(ENSEMBLE_MODEL_CODE.replace("ensembles.ensemble_model", "ensembles.serving"))
    namespace = runpy.run_path(str(old_code))
    logged = namespace["Galaxy10Ensemble"]()
    logged.load_context(SimpleNamespace(artifacts={"ensemble": str(folder2)}))
    np.testing.assert_allclose(logged.predict(None, raw), got, rtol=1e-5, atol=1e-6)


def test_second_stage_tuning_returns_valid_params_and_their_cv_score() -> None:
    from ensembles.crossfit import cv_predict_proba
    from experiments.ensembling.second_stage_tuning import space_for, tune_second_stage

    cfg = config_from_dict(
        {
            "second_stage": {"logreg": {}},
            "cv_folds": 3,
            "seed": 1,
            "tune": {
                "n_trials": 4,
                "metric": "accuracy",
                "search_space": {"logreg.C": {"type": "float", "low": 1e-4, "high": 10.0, "log": True}},
            },
        }
    )
    X, y = blobs(n=90, d=6, k=3, seed=7, spread=3.0)
    params, value = tune_second_stage("logreg", cfg.second_stage["logreg"], space_for(cfg)["logreg"], [(X, y)], cfg, 3)
    assert 1e-4 <= params["C"] <= 10.0 and params["max_iter"] == ss.DEFAULT_PARAMS["logreg"]["max_iter"]
    probs = cv_predict_proba(
        lambda: ss.make_second_stage("logreg", params, seed=1, n_jobs=1), X, y, 3, cv_splits(y, 3, seed=1)
    )
    assert value == pytest.approx(np.mean(probs.argmax(axis=1) == y))  # the objective is the CV accuracy


def test_convergence_warnings_become_one_note_and_other_warnings_pass(caplog: pytest.LogCaptureFixture) -> None:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from experiments.ensembling.context import convergence_notes

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 30)), rng.integers(0, 3, 200)
    notes: list[str] = []
    with pytest.warns(UserWarning, match="something else"):
        with convergence_notes(notes):
            LogisticRegression(max_iter=1, C=100.0).fit(X, y)
            LogisticRegression(max_iter=1, C=100.0).fit(X, y)
            warnings.warn("something else", UserWarning, stacklevel=2)
    assert len(notes) == 1
    assert notes[0].startswith("2 second-stage fit(s) stopped at their iteration limit (lbfgs failed to converge")
    assert "\n" not in notes[0]
    assert any(r.getMessage() == notes[0] for r in caplog.records)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with convergence_notes(notes):  # nothing stopped early: no new note
            LogisticRegression(max_iter=1000).fit(X, y)
    assert len(notes) == 1


def test_the_comparison_says_when_a_class_has_few_validation_images() -> None:
    from experiments.ensembling.evidence import small_validation_note

    y = np.r_[np.zeros(21, int), np.full(3, 1), np.full(12, 2)]
    note = small_validation_note(y, ["not ring", "ring", "other"])
    assert "3 ring" in note and "by 0.33" in note and "data.val_fraction" in note and "other" not in note
    assert small_validation_note(np.r_[np.zeros(12, int), np.ones(10, int)], ["a", "b"]) is None
    assert small_validation_note(np.zeros(30, int), ["a", "b"]) is None  # an absent class is not thin
