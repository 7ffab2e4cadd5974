"""``galaxy10 ensemble``: ensembles of a tuning study's CNNs compared in MLflow.

Glue between the study (Optuna storage, read through :mod:`experiments.tuning`), the logged models
(MLflow, through :mod:`experiments.tracking`), training (cross-fitting re-trains the best trial's
recipe with :func:`experiments.training.train`) and the pure ensemble code in :mod:`ensembles`.

Candidates, all scored on the VALIDATION split only (the test split is never read here):

- ``cnn-best``: the study's best CNN alone (kind ``cnn``);
- ``vote-top<k>`` / ``wvote-top<k>``: soft vote / weighted average of the best k trials (kind
  ``vote``); learned weights are scored by cross-validation over the validation split;
- ``gbm-<model>``: a second-stage model on CNN embeddings (kind ``gbm``);
- ``stack-<model>``: logistic meta-learner on CNN + second-stage probabilities (kind ``stack``);
- in ``crossfit`` mode also ``vote-crossfit<K>``: the average of the K fold CNNs (kind ``vote``).

``mode: crossfit`` fits second stages and the meta-learner on out-of-fold outputs of K fold models
(the validation split is untouched by those fits); ``mode: val_cv`` fits them on the validation
split and reports cross-validated (stacking: nested cross-validated) numbers. Every model selection
in the study used the validation split (early stopping, trial choice), so all validation numbers
share that optimism; the ``ensemble.estimate`` tag of each run says how its numbers were obtained.

One parent run ("ensemble comparison") gets one nested run per candidate with the same metric
names as the CNN runs, a pyfunc model that predicts from raw images, and the comparison table
(CSV + Markdown) and bar chart; the winner is registered as ``<study>-ensemble@<alias>``.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ensembles.config import EnsembleConfig, to_dict
from pipelines.errors import ConfigError, DataError, ModelError
from pipelines.io import pid_alive

log = logging.getLogger(__name__)

COMPARISON_RUN_NAME = "ensemble comparison"
REGISTERED_SUFFIX = "-ensemble"
TABLE_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")


# --------------------------------------------------------------------------------------------
# The study's members: top-k trials with logged models
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """One study trial used by the ensembles: its run, logged model and resolved run config."""

    trial_number: int
    value: float
    run_id: str
    model_uri: str
    cfg: Any  # experiments.config.RunConfig
    tags: Mapping[str, str]
    metrics: Mapping[str, float]

    @property
    def name(self) -> str:
        """``trial-<number>``."""
        return f"trial-{self.trial_number}"


@dataclass(frozen=True)
class StudyMembers:
    """The study's best trials with models, best first, and notes on what was left out."""

    study_name: str
    metric: str
    members: tuple[Member, ...]
    notes: tuple[str, ...]

    @property
    def best(self) -> Member:
        """The study's best trial."""
        return self.members[0]


def study_members(study_name: str, *, storage_url: str, tracking_uri: str, top_k: int) -> StudyMembers:
    """The ``top_k`` best COMPLETE trials of the study that logged a model (the best one must have).

    Raises
    ------
    ConfigError
        Unknown storage or study, or no COMPLETE trial.
    ModelError
        The best trial logged no model.
    """
    from experiments import tracking, tuning

    storage = tuning.open_storage(storage_url, must_exist=True)
    study = tuning.load_existing_study(study_name, storage)
    maximize = study.direction.name == "MAXIMIZE"
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    if not complete:
        counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(tuning.state_counts(study).items())) or "no trials"
        raise ConfigError(f"study {study_name!r} has no COMPLETE trial ({counts}); finish one with "
                          f"`galaxy10 tune --study {study_name} ...` first")
    complete.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
    best = complete[0]
    if not best.user_attrs.get("model_uri") or not best.user_attrs.get(tuning.ATTR_TRIAL_RUN):
        raise ModelError(f"best trial {best.number} of study {study_name!r} has no logged model; re-run the study "
                         "with `galaxy10 tune` so trials log their models")
    with_models = [t for t in complete if t.user_attrs.get("model_uri") and t.user_attrs.get(tuning.ATTR_TRIAL_RUN)]
    notes = []
    if len(with_models) < top_k:
        notes.append(f"vote.top_k={top_k} but only {len(with_models)} COMPLETE trial(s) logged a model; set "
                     "study.log_models: all in the tuning config to vote over more trials")
    members = []
    for t in with_models[:top_k]:
        run_id = str(t.user_attrs[tuning.ATTR_TRIAL_RUN])
        facts = tracking.get_run_facts(run_id, tracking_uri=tracking_uri)
        members.append(Member(trial_number=t.number, value=float(t.value), run_id=run_id,
                              model_uri=str(t.user_attrs["model_uri"]), cfg=tracking.logged_run_config(run_id, tracking_uri=tracking_uri),
                              tags=facts.tags, metrics=facts.metrics))
    metric = str(study.user_attrs.get(tuning.ATTR_METRIC, "accuracy"))
    return StudyMembers(study_name, metric, tuple(members), tuple(notes))


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One compared model: honest validation probabilities, the deployable ensemble, what it is."""

    name: str
    kind: str
    members: list[str]
    val_probs: np.ndarray
    estimate: str
    model: Any  # ensembles.serving.EnsembleModel
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Context:
    """What the candidate builders share: config, data, members and their validation outputs."""

    cfg: EnsembleConfig
    data: Any  # experiments.training.TrainData
    members: StudyMembers
    tracking_uri: str
    y_val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    notes: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return self.data.num_classes


def _embedder(model: Any, *, model_id: str, tta: bool, batch_size: int) -> Any:
    from ensembles.embeddings import CNNEmbedder

    return CNNEmbedder(model, tta=tta, batch_size=batch_size, model_id=model_id).fit()


def _make_factory(name: str, params: Mapping[str, Any], cfg: EnsembleConfig) -> Callable[[], Any]:
    from ensembles.second_stage import make_second_stage

    # one thread per model unless configured: OpenMP thread pools thrash when cores are shared
    return functools.partial(make_second_stage, name, dict(params), seed=cfg.seed, n_jobs=cfg.n_jobs or 1)


def _branch(model: Any, member_cfg: Any, *, tta: bool, name: str, run_id: str | None,
            second: Any = None, meta: Any = None) -> Any:
    from ensembles.serving import Branch

    return Branch(cnn=model, size=int(member_cfg.data.size), crop=int(member_cfg.data.crop), tta=bool(tta),
                  second=second, meta=meta, name=name, run_id=run_id)


def _ensemble(ctx: _Context, kind: str, branches: list[Any], *, weights: Any = None, description: str = "") -> Any:
    from ensembles.serving import EnsembleModel

    return EnsembleModel(kind=kind, branches=branches, class_names=tuple(ctx.data.class_names),
                         class_slugs=tuple(ctx.data.class_slugs), weights=weights, description=description,
                         batch_size=ctx.cfg.embeddings.batch_size)


# --- cross-fitting ----------------------------------------------------------------------------
@dataclass
class CrossfitResult:
    """Fold models (paths), out-of-fold outputs on train, and each fold model's validation outputs."""

    key: str
    model_paths: list[Path]
    oof: Any  # ensembles.crossfit.OutOfFold (models = model paths)
    val_embeddings: list[np.ndarray]
    val_probs: list[np.ndarray]
    cached_folds: int
    recipe: Any


def crossfit_key(best: Member, data: Any, recipe: Any, n_folds: int, seed: int) -> str:
    """Cache key of a cross-fitting: the recipe, the study run, the data and split, the folds."""
    from experiments.config import to_yaml

    payload = json.dumps({"run": best.run_id, "fingerprint": data.fingerprint, "recipe": to_yaml(recipe),
                          "train": hashlib.sha256(np.asarray(data.train, np.int64).tobytes()).hexdigest(),
                          "val": hashlib.sha256(np.asarray(data.val, np.int64).tobytes()).hexdigest(),
                          "folds": n_folds, "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_crossfit(ctx: _Context) -> CrossfitResult:
    """Train the best trial's recipe on K folds of train; out-of-fold and validation outputs per fold.

    Fold models are cached (``<cache>/crossfit/<key>/fold<k>.keras``) so a re-run reuses them.
    """
    import keras

    from ensembles.crossfit import crossfit, make_folds
    from experiments import tracking
    from experiments.tracking import NullTracker
    from experiments.training import train
    from pipelines.io import atomic_path, write_json_atomic
    from pipelines.paths import default_cache_dir

    cfg, data, best = ctx.cfg, ctx.data, ctx.members.best
    recipe = best.cfg
    if cfg.crossfit.epochs is not None:
        recipe = replace(recipe, train=replace(recipe.train, epochs=int(cfg.crossfit.epochs)))
    folds = make_folds(data.train, data.labels[data.train], cfg.crossfit.folds, seed=cfg.seed)
    key = crossfit_key(best, data, recipe, cfg.crossfit.folds, cfg.seed)
    folder = default_cache_dir() / "crossfit" / key
    val_emb: dict[int, np.ndarray] = {}
    val_probs: dict[int, np.ndarray] = {}
    cached = 0
    recall_lookup = functools.partial(tracking.run_val_recall, tracking_uri=ctx.tracking_uri)

    def train_fold(fold: Any) -> tuple[Path, np.ndarray]:
        nonlocal cached
        path = folder / f"fold{fold.number}.keras"
        record = folder / f"fold{fold.number}.json"
        fold_data = replace(data, train=fold.train)
        if path.is_file() and record.is_file() and json.loads(record.read_text()).get("trained_on_sha256") == \
                hashlib.sha256(np.asarray(fold_data.train, np.int64).tobytes()).hexdigest():
            cached += 1
            log.info("cross-fitting fold %d: reusing the cached fold model %s", fold.number, path)
            return path, fold_data.train
        log.info("cross-fitting fold %d/%d: training %s on %d of %d training images", fold.number + 1,
                 len(folds), best.name, len(fold_data.train), len(data.train))
        result = train(recipe, NullTracker(), data=fold_data, log_model=False, verbose=0, recall_lookup=recall_lookup)
        with atomic_path(path, suffix=".keras") as tmp:
            result.model.save(tmp)
        write_json_atomic(record, {"fold": fold.number, "trained_on": len(fold_data.train),
                                   "trained_on_sha256": hashlib.sha256(
                                       np.asarray(fold_data.train, np.int64).tobytes()).hexdigest(),
                                   "val_accuracy": float(result.val_metrics["accuracy"]),
                                   "best_epoch": int(result.best_epoch)})
        return path, fold_data.train

    def embed_fold(path: Path, fold: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
        emb = _embedder(model, model_id=f"crossfit-{key}-fold{fold.number}", tta=cfg.embeddings.tta,
                        batch_size=cfg.embeddings.batch_size)
        held = emb.embed(data.images, fold.heldout, split=f"train-fold{fold.number}", data_fingerprint=data.fingerprint)
        val = emb.embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint)
        val_emb[fold.number], val_probs[fold.number] = val.embeddings, val.probs
        return fold.heldout, held.embeddings, held.probs

    oof = crossfit(folds, data.train, train_fold, embed_fold)
    keras.backend.clear_session()
    order = [f.number for f in folds]
    return CrossfitResult(key=key, model_paths=list(oof.models), oof=oof,
                          val_embeddings=[val_emb[k] for k in order], val_probs=[val_probs[k] for k in order],
                          cached_folds=cached, recipe=recipe)


# --- optional Optuna tuning of second stages -------------------------------------------------
def _space_for(cfg: EnsembleConfig) -> dict[str, Any]:
    """``{model: SearchSpace}`` from ``tune.search_space`` (keys ``<model>.<param>``), validated."""
    from ensembles.second_stage import allowed_params
    from experiments.search_space import parse_search_space

    by_model: dict[str, dict[str, Any]] = {}
    for key, spec in cfg.tune.search_space.items():
        model, _, param = str(key).partition(".")
        if model not in cfg.second_stage or not param:
            raise ConfigError(f"config key tune.search_space.{key} must be <model>.<param> with a model configured "
                              f"under second_stage ({', '.join(cfg.second_stage) or 'none'})")
        if param not in allowed_params(model):
            raise ConfigError(f"unknown config key tune.search_space.{key}; allowed keys for {model}: "
                              f"{', '.join(allowed_params(model))}")
        spec = dict(spec) if isinstance(spec, Mapping) else spec
        if isinstance(spec, dict):
            spec.setdefault("target", param)
        by_model.setdefault(model, {})[param] = spec
    return {m: parse_search_space(raw) for m, raw in by_model.items()}


def _tuned_models(cfg: EnsembleConfig) -> set[str]:
    return {str(k).partition(".")[0] for k in cfg.tune.search_space}


def validate_config(cfg: EnsembleConfig) -> None:
    """Checks of the parts of the ensemble config that ``experiments/`` owns (the tuning space)."""
    _space_for(cfg)


def tune_second_stage(name: str, base: Mapping[str, Any], space: Any, fit_sets: Sequence[tuple[np.ndarray, np.ndarray]],
                      cfg: EnsembleConfig, n_classes: int) -> tuple[dict[str, Any], float]:
    """Small Optuna study (seeded TPE, through :mod:`experiments.tuning`) over ``space`` for ``name``.

    The objective is the cross-validated ``tune.metric`` averaged over ``fit_sets`` (each an
    ``(X, y)`` the second stage is fit on); the study lives in a throw-away SQLite file. Returns
    (best params, best objective: accuracy, or minus the log loss).
    """
    from ensembles.crossfit import cv_predict_proba, cv_splits
    from ensembles.second_stage import resolve_params
    from experiments import tuning
    from experiments.evaluation import classification_metrics
    from experiments.search_space import PrunerConfig, SamplerConfig, StudyConfig, TuneConfig, assignments, suggest

    def objective(trial: Any) -> float:
        params = resolve_params(name, {**base, **assignments(space, suggest(trial, space))})
        scores = []
        for X, y in fit_sets:
            probs = cv_predict_proba(_make_factory(name, params, cfg), X, y, n_classes,
                                     cv_splits(y, cfg.cv_folds, seed=cfg.seed))
            m = classification_metrics(y, probs, [str(i) for i in range(n_classes)])
            scores.append(-m["log_loss"] if cfg.tune.metric == "log_loss" else m["accuracy"])
        return float(np.mean(scores))

    study_cfg = StudyConfig(name=f"second-stage-{name}", n_trials=cfg.tune.n_trials,
                            sampler=SamplerConfig("tpe", {"seed": cfg.seed, "multivariate": True}),
                            pruner=PrunerConfig("none", {}))
    with tempfile.TemporaryDirectory(prefix="galaxy10-tune-") as tmp:
        tuning.route_optuna_logging(logging.WARNING)
        storage = tuning.open_storage(f"sqlite:///{Path(tmp) / 'second_stage.db'}")
        study = tuning.open_study(TuneConfig(base=None, run={}, study=study_cfg, space=space), storage)
        study.optimize(objective, n_trials=cfg.tune.n_trials)
        best_params, best_value = dict(study.best_params), float(study.best_value)
        storage.engine.dispose()
    best = resolve_params(name, {**base, **assignments(space, best_params)})
    log.info("tuned %s over %d trials: %s (cv %s %.4f)", name, cfg.tune.n_trials, best, cfg.tune.metric,
             abs(best_value))
    return best, best_value


def _tuned_params(ctx: _Context, fit_sets: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, Any]]:
    params = {name: dict(p) for name, p in ctx.cfg.second_stage.items()}
    if ctx.cfg.tune.n_trials <= 0:
        return params
    for name, space in _space_for(ctx.cfg).items():
        params[name], _ = tune_second_stage(name, params[name], space, fit_sets, ctx.cfg, ctx.n_classes)
    return params


# --- candidate builders ------------------------------------------------------------------------
def vote_candidates(ctx: _Context, models: Sequence[Any], member_probs: Sequence[np.ndarray]) -> list[Candidate]:
    """``vote-top<k>`` (equal weights) and ``wvote-top<k>`` (weights fit on val, scored by CV)."""
    from ensembles.crossfit import cv_splits
    from ensembles.voting import cv_weighted_vote, fit_vote_weights, soft_vote

    members = ctx.members.members
    if len(members) < 2:
        ctx.notes.append("fewer than 2 trials with models: no voting candidates")
        return []
    k = len(members)
    names = [m.name for m in members]
    branches = [_branch(model, m.cfg, tta=m.cfg.augment.tta, name=m.name, run_id=m.run_id)
                for model, m in zip(models, members)]
    out = []
    start = time.perf_counter()
    probs = soft_vote(member_probs)
    out.append(Candidate(f"vote-top{k}", "vote", names, probs, "validation split (equal weights, nothing fit on it)",
                         _ensemble(ctx, "vote", branches, description=f"soft vote of {', '.join(names)}"),
                         {"weights": "equal"}, time.perf_counter() - start))
    method = ctx.cfg.vote.weighted
    if method is not None:
        start = time.perf_counter()
        splits = cv_splits(ctx.y_val, ctx.cfg.cv_folds, seed=ctx.cfg.seed)
        oof, _ = cv_weighted_vote(member_probs, ctx.y_val, splits, method=method)
        weights = fit_vote_weights(member_probs, ctx.y_val, method=method)
        params = {"weights_method": method, **{f"weight.{n}": f"{w:.4f}" for n, w in zip(names, weights)}}
        out.append(Candidate(f"wvote-top{k}", "vote", names, oof,
                             f"validation {len(splits)}-fold CV (weights fit on the other folds by {method}); "
                             "deployed weights fit on the whole validation split",
                             _ensemble(ctx, "vote", branches, weights=weights,
                                       description=f"weighted vote ({method}) of {', '.join(names)}"),
                             params, time.perf_counter() - start))
    return out


def crossfit_candidates(ctx: _Context, cf: CrossfitResult) -> list[Candidate]:
    """Candidates from the K fold models: their average, and per-fold second stages (+ stacking)."""
    import keras

    from ensembles.crossfit import cv_predict_proba, cv_splits
    from ensembles.second_stage import full_proba
    from ensembles.stacking import fit_meta, meta_predict
    from ensembles.voting import soft_vote

    cfg, data = ctx.cfg, ctx.data
    best = ctx.members.best
    oof = cf.oof
    n, k = ctx.n_classes, len(cf.model_paths)
    y_oof = data.labels[oof.indices]
    models = [keras.models.load_model(p, safe_mode=True, compile=False) for p in cf.model_paths]
    fold_names = [f"{best.name}/fold-{i}" for i in range(k)]
    tta = cfg.embeddings.tta
    out = [Candidate(
        f"vote-crossfit{k}", "vote", fold_names, soft_vote(cf.val_probs),
        "validation split (fold models trained on train folds only)",
        _ensemble(ctx, "vote", [_branch(m, cf.recipe, tta=tta, name=nm, run_id=None) for m, nm in zip(models, fold_names)],
                  description=f"average of the {k} cross-fitting fold CNNs of {best.name}"),
        {"folds": k})]
    fit_sets = [(oof.embeddings[oof.rows_of(i)], y_oof[oof.rows_of(i)]) for i in range(k)]
    params = _tuned_params(ctx, fit_sets)
    for name, p in params.items():
        start = time.perf_counter()
        factory = _make_factory(name, p, cfg)
        seconds = []
        fitted, val_out, second_oof = [], [], np.zeros((len(oof.indices), n))
        for i, (X, y) in enumerate(fit_sets):
            t0 = time.perf_counter()
            est = factory().fit(X, y)
            seconds.append(time.perf_counter() - t0)
            fitted.append(est)
            val_out.append(full_proba(est, cf.val_embeddings[i], n))
            if name in cfg.stack.second_stage:  # inner CV inside the fold: out-of-fold meta-features
                second_oof[oof.rows_of(i)] = cv_predict_proba(factory, X, y, n, cv_splits(y, cfg.cv_folds, seed=cfg.seed))
        tuned = " (hyper-parameters tuned by CV on the training folds' out-of-fold embeddings)" \
            if cfg.tune.n_trials and name in _tuned_models(cfg) else ""
        members = [f"{fn}+{name}" for fn in fold_names]
        out.append(Candidate(
            f"gbm-{name}", "gbm", members, np.mean(val_out, axis=0),
            f"validation split (second stages fit on out-of-fold train embeddings, one per fold model){tuned}",
            _ensemble(ctx, "gbm", [_branch(m, cf.recipe, tta=tta, name=mn, run_id=None, second=e)
                                   for m, mn, e in zip(models, members, fitted)],
                      description=f"{name} on the embeddings of each of {k} fold CNNs, averaged"),
            {**{f"{name}.{kk}": v for kk, v in p.items()}, "fit_seconds_per_fold": f"{np.mean(seconds):.3f}"},
            time.perf_counter() - start))
        if name in cfg.stack.second_stage:
            start = time.perf_counter()
            meta = fit_meta([oof.probs, second_oof], y_oof, C=cfg.stack.C, seed=cfg.seed)
            val_stack = np.mean([meta_predict(meta, [cf.val_probs[i], val_out[i]], n) for i in range(k)], axis=0)
            members = [f"{fn}+{name}+meta" for fn in fold_names]
            out.append(Candidate(
                f"stack-{name}", "stack", members, val_stack,
                "validation split (meta-learner fit on out-of-fold train probabilities of fold CNNs and "
                f"in-fold cross-validated {name})",
                _ensemble(ctx, "stack", [_branch(m, cf.recipe, tta=tta, name=mn, run_id=None, second=e, meta=meta)
                                         for m, mn, e in zip(models, members, fitted)],
                          description=f"logistic meta-learner on fold CNN + {name} probabilities, averaged over folds"),
                {"meta.C": cfg.stack.C, **{f"{name}.{kk}": v for kk, v in p.items()}},
                time.perf_counter() - start))
    return out


def val_cv_candidates(ctx: _Context, best_model: Any) -> list[Candidate]:
    """Second stages (and stacks) fit on the best CNN's validation embeddings, scored by (nested) CV."""
    from ensembles.crossfit import cv_predict_proba, cv_splits
    from ensembles.stacking import fit_meta, nested_cv_stack

    cfg, data = ctx.cfg, ctx.data
    best = ctx.members.best
    n = ctx.n_classes
    y = ctx.y_val
    tta = cfg.embeddings.tta
    emb = _embedder(best_model, model_id=best.run_id, tta=tta, batch_size=cfg.embeddings.batch_size)
    val = emb.embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint)
    X, cnn_probs = val.embeddings, val.probs
    splits = cv_splits(y, cfg.cv_folds, seed=cfg.seed)
    params = _tuned_params(ctx, [(X, y)])
    out = []
    for name, p in params.items():
        start = time.perf_counter()
        factory = _make_factory(name, p, cfg)
        oof = cv_predict_proba(factory, X, y, n, splits)
        t0 = time.perf_counter()
        final = factory().fit(X, y)
        fit_s = time.perf_counter() - t0
        tuned = cfg.tune.n_trials > 0 and name in _tuned_models(cfg)
        note = " (optimistic: hyper-parameters tuned on the same validation folds)" if tuned else ""
        out.append(Candidate(
            f"gbm-{name}", "gbm", [f"{best.name}+{name}"], oof,
            f"validation {len(splits)}-fold CV (fit on the best CNN's validation embeddings){note}",
            _ensemble(ctx, "gbm", [_branch(best_model, best.cfg, tta=tta, name=f"{best.name}+{name}",
                                           run_id=best.run_id, second=final)],
                      description=f"{name} on {best.name}'s embeddings, fit on the validation split"),
            {**{f"{name}.{kk}": v for kk, v in p.items()}, "fit_seconds": f"{fit_s:.3f}"},
            time.perf_counter() - start))
        if name in cfg.stack.second_stage:
            start = time.perf_counter()
            honest = nested_cv_stack(cnn_probs, X, y, factory, n, splits, inner_folds=cfg.cv_folds, C=cfg.stack.C,
                                     seed=cfg.seed)
            meta = fit_meta([cnn_probs, oof], y, C=cfg.stack.C, seed=cfg.seed)
            out.append(Candidate(
                f"stack-{name}", "stack", [best.name, f"{best.name}+{name}"], honest,
                f"validation nested {len(splits)}-fold CV (meta-learner and {name} refit inside each fold){note}",
                _ensemble(ctx, "stack", [_branch(best_model, best.cfg, tta=tta, name=f"{best.name}+{name}+meta",
                                                 run_id=best.run_id, second=final, meta=meta)],
                          description=f"logistic meta-learner on {best.name} + {name} probabilities"),
                {"meta.C": cfg.stack.C, **{f"{name}.{kk}": v for kk, v in p.items()}},
                time.perf_counter() - start))
    return out


# --------------------------------------------------------------------------------------------
# Comparison: build every candidate, log everything, register the winner
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComparisonReport:
    """What ``galaxy10 ensemble`` did."""

    study_name: str
    mode: str
    parent_run_id: str
    experiment_name: str
    tracking_uri: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    winner: str
    winner_run_id: str
    registered: str
    child_run_ids: Mapping[str, str]
    model_uris: Mapping[str, str]
    notes: tuple[str, ...]
    synthetic: bool
    seconds: float
    candidates: tuple[Candidate, ...] = ()


def load_study_data(members: StudyMembers, data_path: str | Path | None) -> Any:
    """The best trial's data (its split, size and image limit), checked against the study's fingerprint."""
    from experiments.training import load_training_data

    best = members.best
    path = Path(data_path) if data_path is not None else Path(best.tags.get("data.path") or "")
    if not str(path) or str(path) == "." or not path.is_file():
        raise DataError(f"the study's data file {str(path) if str(path) not in ('', '.') else '(not recorded)'} is "
                        "missing; pass --data FILE pointing at the file the study was trained on")
    data = load_training_data(best.cfg.data, path)
    recorded = best.tags.get("data.fingerprint")
    if recorded and recorded != data.fingerprint:
        raise DataError(f"{path} has fingerprint {data.fingerprint[:12]} but the study was trained on "
                        f"{recorded[:12]}; pass --data with the original file")
    return data


def _usable_members(members: StudyMembers, data: Any) -> tuple[StudyMembers, list[str]]:
    """Drop trials whose data settings give another split than the best trial's (they cannot vote)."""
    keep, notes = [members.best], []
    ref = members.best.cfg.data
    for m in members.members[1:]:
        d = m.cfg.data
        if (d.split_seed, d.test_fraction, d.val_fraction, d.max_images) != \
                (ref.split_seed, ref.test_fraction, ref.val_fraction, ref.max_images):
            notes.append(f"{m.name} used another split/image limit than the best trial; left out of the votes")
            continue
        keep.append(m)
    return replace(members, members=tuple(keep)), notes


def member_val_probs(ctx: _Context, models: Sequence[Any]) -> list[np.ndarray]:
    """Each member CNN's validation probabilities (its own TTA setting), checked against its run."""
    from experiments.evaluation import classification_metrics
    from experiments.training import load_training_data

    out = []
    by_size = {int(ctx.data.size): ctx.data}
    for model, m in zip(models, ctx.members.members):
        size = int(m.cfg.data.size)
        if size not in by_size:
            by_size[size] = load_training_data(m.cfg.data, ctx.data.path)
        data = by_size[size]
        if not np.array_equal(data.val, ctx.data.val):
            raise DataError(f"{m.name}'s validation split differs from the best trial's; the study's data changed")
        emb = _embedder(model, model_id=m.run_id, tta=m.cfg.augment.tta, batch_size=ctx.cfg.embeddings.batch_size)
        probs = emb.embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint).probs
        acc = classification_metrics(ctx.y_val, probs, ctx.data.class_slugs)["accuracy"]
        logged = m.metrics.get("val_accuracy")
        if logged is not None and abs(acc - logged) > 0.005:
            ctx.notes.append(f"{m.name}: validation accuracy {acc:.4f} here vs {logged:.4f} logged by its run")
            log.warning("%s", ctx.notes[-1])
        out.append(np.asarray(probs, dtype=np.float64))
    return out


def build_candidates(cfg: EnsembleConfig, members: StudyMembers, data: Any, *, tracking_uri: str) -> tuple[
        list[Candidate], list[str], dict[str, Any]]:
    """Every candidate of the comparison with honest validation probabilities (see module docstring)."""
    from threadpoolctl import threadpool_limits

    from experiments import tracking

    members, notes = _usable_members(members, data)
    ctx = _Context(cfg=cfg, data=data, members=members, tracking_uri=tracking_uri,
                   y_val=np.asarray(data.labels[data.val], dtype=np.int64), notes=list(members.notes) + notes)
    facts: dict[str, Any] = {}
    cf = None
    if cfg.mode == "crossfit":  # before loading the members: training clears the Keras session
        start = time.perf_counter()
        cf = run_crossfit(ctx)
        facts.update(crossfit_key=cf.key, crossfit_cached_folds=cf.cached_folds,
                     crossfit_seconds=time.perf_counter() - start,
                     crossfit_records=[{"fold": r.number, "trained_on": len(r.trained_on), "embedded": len(r.embedded)}
                                       for r in cf.oof.records])
    models = [tracking.load_model_bundle(m.model_uri).model for m in members.members]
    probs = member_val_probs(ctx, models)
    best = members.best
    candidates = [Candidate(
        "cnn-best", "cnn", [best.name], probs[0], "validation split (the study's own model selection used it)",
        _ensemble(ctx, "cnn", [_branch(models[0], best.cfg, tta=best.cfg.augment.tta, name=best.name,
                                       run_id=best.run_id)], description=f"{best.name} alone"),
        {"trial_number": best.trial_number})]
    # BLAS/OpenMP pools sized to the machine thrash when its cores are shared (measured: a logistic
    # regression on 1080x256 embeddings took 36 s with 2 OpenBLAS threads on a busy 2-core box, 1.4 s with 1).
    with threadpool_limits(limits=cfg.n_jobs or 1), convergence_notes(ctx.notes):
        candidates += vote_candidates(ctx, models, probs)
        if cf is not None:
            candidates += crossfit_candidates(ctx, cf)
        else:
            candidates += val_cv_candidates(ctx, models[0])
    return candidates, ctx.notes, facts


@contextlib.contextmanager
def convergence_notes(notes: list[str]) -> Iterator[None]:
    """Collect scikit-learn's multi-line ``ConvergenceWarning`` messages into one logged line and a note.

    A second stage that stops at its iteration limit is still used as fitted; the user reads one line
    (and the comparison run's notes) instead of a ten-line warning per fit. Other warnings pass through.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield
    stopped = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if stopped:
        first = " ".join(str(stopped[0].message).split())[:120]
        note = (f"{len(stopped)} second-stage fit(s) stopped at their iteration limit ({first}); they are used "
                "as fitted: raise max_iter (or lower C) in the ensemble config to let them converge")
        log.warning(note)
        notes.append(note)


def _row(candidate: Candidate, metrics: Mapping[str, Any], slugs: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"candidate": candidate.name, "kind": candidate.kind}
    for key in TABLE_METRICS:
        row[f"val_{key}"] = round(float(metrics[key]), 4)
    for slug in slugs:
        row[f"val_recall_{slug}"] = round(float(metrics[f"recall_{slug}"]), 4)
    row["members"] = " ".join(candidate.members)
    row["estimate"] = candidate.estimate
    return row


def comparison_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The comparison table as CSV text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def comparison_markdown(rows: Sequence[Mapping[str, Any]], *, winner: str, select_metric: str, synthetic: bool) -> str:
    """The comparison table as Markdown (main metrics; the CSV has per-class recall too)."""
    cols = ["candidate", "kind", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_log_loss", "estimate"]
    lines = []
    if synthetic:
        lines += ["**SYNTHETIC data: these numbers say nothing about real galaxies.**", ""]
    lines += [f"Validation split only; winner by val_{select_metric}: **{winner}**.", "",
              "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = [f"**{r[c]}**" if c == "candidate" and r[c] == winner else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_figure(rows: Sequence[Mapping[str, Any]], *, title: str) -> Any:
    """Grouped bars: validation accuracy, balanced accuracy and macro-F1 per candidate."""
    from matplotlib.figure import Figure

    metrics = [("val_accuracy", "accuracy"), ("val_balanced_accuracy", "balanced accuracy"),
               ("val_macro_f1", "macro-F1")]
    names = [r["candidate"] for r in rows]
    fig = Figure(figsize=(max(7.0, 1.1 * len(names) + 2), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    for i, (key, label) in enumerate(metrics):
        vals = [float(r[key]) for r in rows]
        bars = ax.bar(x + (i - 1) * width, vals, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in vals], fontsize=6, rotation=90, padding=2)
    lows = [min(float(r[k]) for k, _ in metrics) for r in rows]
    ax.set_ylim(max(0.0, min(lows) - 0.1), min(1.0, max(float(r[k]) for r in rows for k, _ in metrics) + 0.08))
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("validation split")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _example_image(data: Any) -> np.ndarray:
    """One raw validation image from the file, the pyfunc models' input example."""
    from pipelines.reader import Galaxy10File

    with Galaxy10File(data.path) as f:
        return np.asarray(f.images(np.asarray(data.val[:1])))


def _model_meta(candidate: Candidate, data: Any, study_name: str, mode: str) -> dict[str, Any]:
    from pipelines.preprocess import PREPROCESS_VERSION

    first = candidate.model.branches[0]
    return {"size": int(first.size), "crop": int(first.crop), "preprocess_version": PREPROCESS_VERSION,
            "class_names": list(data.class_names), "class_slugs": list(data.class_slugs),
            "num_classes": data.num_classes, "data_fingerprint": data.fingerprint, "synthetic": bool(data.synthetic),
            "provenance": data.provenance, "tta": bool(first.tta), "kind": candidate.kind,
            "members": candidate.members, "candidate": candidate.name, "study": study_name, "ensemble_mode": mode,
            "input": "uint8 (N, H, W, 3) raw RGB images of any size (square-cropped and resized per member)"}


def close_abandoned_comparisons(study_name: str, tracking_uri: str) -> list[str]:
    """Mark FAILED the study's comparison runs (and their candidate runs) left RUNNING by a killed command.

    A comparison run records the host and process id of the command that made it (``run.host``,
    ``run.pid``); one that is still RUNNING although that process is gone from this host was killed
    (SIGKILL, power loss) before it could end its runs. Runs from other hosts, or whose process still
    exists, are left alone. Returns the run ids closed.
    """
    from experiments import tracking

    host = socket.gethostname()
    reason = "the galaxy10 ensemble command that logged this run stopped without ending it (killed)"
    closed = []
    for run in tracking.find_runs({"ensemble.role": "comparison", "optuna.study": study_name},
                                  tracking_uri=tracking_uri):
        pid = run.tags.get("run.pid", "")
        if run.status != "RUNNING" or run.tags.get("run.host") != host or not pid.isdigit() or pid_alive(int(pid)):
            continue
        for child in tracking.find_runs({}, tracking_uri=tracking_uri, parent_run_id=run.run_id):
            if child.status == "RUNNING":
                tracking.finish_run(child.run_id, "FAILED", tracking_uri=tracking_uri,
                                    tags={"ensemble.fail_reason": reason})
                closed.append(child.run_id)
        tracking.finish_run(run.run_id, "FAILED", tracking_uri=tracking_uri, tags={"ensemble.fail_reason": reason})
        closed.append(run.run_id)
        log.warning("ensemble comparison run %s of study %s was left RUNNING by process %s, which is gone; "
                    "marked it and its unfinished candidate runs FAILED", run.run_id, study_name, pid)
    return closed


#: The candidate every ensemble must beat: the study's best CNN alone.
BASELINE_CANDIDATE = "cnn-best"


def choose_champion(rows: Sequence[Mapping[str, Any]], candidates: Sequence[Candidate], y_val: np.ndarray,
                    n_classes: int, metric: str, *, seed: int = 0) -> tuple[Mapping[str, Any], str]:
    """The comparison's champion and the sentence saying why.

    The candidate with the best validation ``metric`` wins only if it leads ``cnn-best`` by more than
    the paired-bootstrap standard error of the difference (same validation images); otherwise the
    study's best CNN stays champion: an ensemble must not replace it on noise.
    """
    from experiments.evaluation import paired_difference_se

    key = f"val_{metric}"
    top = max(rows, key=lambda r: (r[key], -rows.index(r)))  # ties: the simpler, earlier candidate
    base = next((r for r in rows if r["candidate"] == BASELINE_CANDIDATE), None)
    if base is None or top is base:
        return top, f"{top['candidate']} has the best val_{metric} ({top[key]:.4f}) and is champion"
    probs = {c.name: c.val_probs for c in candidates}
    se = paired_difference_se(y_val, probs[top["candidate"]].argmax(1), probs[BASELINE_CANDIDATE].argmax(1),
                              n_classes, metric, seed=seed)
    lead = float(top[key] - base[key])
    if lead > se:
        return top, (f"{top['candidate']} leads {BASELINE_CANDIDATE} by {lead:.4f} val_{metric}, more than the "
                     f"paired-bootstrap standard error {se:.4f}: it is champion")
    return base, (f"{top['candidate']} leads {BASELINE_CANDIDATE} by only {lead:.4f} val_{metric}, within the "
                  f"paired-bootstrap standard error {se:.4f} on {len(y_val)} validation images: "
                  f"{BASELINE_CANDIDATE} stays champion")


def run_comparison(study_name: str, cfg: EnsembleConfig, *, storage_url: str, tracking_uri: str | None = None,
                   data_path: str | Path | None = None, config_text: str | None = None) -> ComparisonReport:
    """Build every candidate, log the comparison to MLflow and register the winner (see module docs)."""
    from experiments import tracking
    from experiments.evaluation import classification_metrics, per_class_csv, prefixed
    from experiments.plots import confusion_figure
    from experiments.training import data_tags
    from ensembles.serving import save_ensemble

    started = time.perf_counter()
    validate_config(cfg)
    uri = tracking.require_tracking_store(tracking_uri)
    members = study_members(study_name, storage_url=storage_url, tracking_uri=uri, top_k=cfg.vote.top_k)
    data = load_study_data(members, data_path)
    if data.synthetic:
        log.warning("ensemble comparison on SYNTHETIC data: %s", data.describe())
    candidates, notes, facts = build_candidates(cfg, members, data, tracking_uri=uri)
    y_val = np.asarray(data.labels[data.val], dtype=np.int64)
    slugs, names = data.class_slugs, data.class_names
    experiment = members.best.cfg.experiment_name
    columns = ("candidate", "kind", *(f"val_{k}" for k in TABLE_METRICS), *(f"val_recall_{s}" for s in slugs),
               "members", "estimate", "run_id")
    common_tags = {**data_tags(data), **tracking.git_commit(), **tracking.package_versions(),
                   "optuna.study": study_name, "ensemble.mode": cfg.mode}
    example = _example_image(data)
    rows, child_ids, model_uris = [], {}, {}
    close_abandoned_comparisons(study_name, uri)
    with tracking.MlflowTracker(experiment, COMPARISON_RUN_NAME, tracking_uri=uri,
                                tags={**common_tags, "ensemble.role": "comparison", "run.host": socket.gethostname(),
                                      "run.pid": os.getpid()}) as parent:
        parent.log_params({**{f"ensemble.{k}": v for k, v in _flat(to_dict(cfg)).items()},
                           "study.name": study_name, "study.storage": storage_url,
                           "study.best_trial": members.best.trial_number,
                           "members": " ".join(m.name for m in members.members)})
        if config_text is not None:
            parent.log_text(config_text, "ensemble_config.yaml")
        parent.log_dict(json.loads(json.dumps(to_dict(cfg))), "ensemble_config_resolved.json")
        if facts:
            parent.log_dict(json.loads(json.dumps(facts, default=str)), "crossfit.json")
            if "crossfit_seconds" in facts:
                parent.log_metrics({"crossfit_seconds": float(facts["crossfit_seconds"]),
                                    "crossfit_cached_folds": float(facts["crossfit_cached_folds"])})
        for cand in candidates:
            metrics = classification_metrics(y_val, cand.val_probs, slugs)
            tags = {**common_tags, "kind": cand.kind, "candidate": cand.name, "members": " ".join(cand.members),
                    "ensemble.estimate": cand.estimate, "ensemble.description": cand.model.description}
            with tracking.MlflowTracker(experiment, cand.name, tracking_uri=uri, parent_run_id=parent.run_id,
                                        tags=tags) as child:
                child.log_params({"kind": cand.kind, "n_branches": len(cand.model.branches),
                                  **{k: str(v) for k, v in cand.params.items()}})
                child.log_metrics({**prefixed(metrics, "val"), "build_seconds": cand.seconds})
                child.log_text(per_class_csv(metrics, slugs, names), "per_class_metrics_val.csv")
                child.log_figure(confusion_figure(metrics["confusion"], names,
                                                  title=f"{cand.name}: validation confusion (row-normalised)"),
                                 "confusion_matrix_val.png")
                with tempfile.TemporaryDirectory(prefix="galaxy10-ensemble-") as tmp:
                    folder = save_ensemble(cand.model, Path(tmp) / "ensemble")
                    model_uris[cand.name] = tracking.log_ensemble_model(
                        child, folder, meta=_model_meta(cand, data, study_name, cfg.mode), input_example=example,
                        n_classes=data.num_classes)
                child_ids[cand.name] = child.run_id
            rows.append({**_row(cand, metrics, slugs), "run_id": child.run_id})
            log.info("%-22s val accuracy %.4f, balanced %.4f, macro-F1 %.4f (%s)", cand.name, metrics["accuracy"],
                     metrics["balanced_accuracy"], metrics["macro_f1"], cand.estimate)
        select_metric = members.metric if cfg.select_metric == "study" else cfg.select_metric
        key = f"val_{select_metric}"
        winner, rule = choose_champion(rows, candidates, y_val, data.num_classes, select_metric, seed=cfg.seed)
        log.info("champion: %s", rule)
        if winner["candidate"] == BASELINE_CANDIDATE and len(rows) > 1:
            notes.append(rule)
        md = comparison_markdown(rows, winner=winner["candidate"], select_metric=select_metric,
                                 synthetic=data.synthetic) + f"\nChampion rule: {rule}.\n"
        parent.log_text(comparison_csv(rows, columns), "comparison.csv")
        parent.log_text(md, "comparison.md")
        parent.log_figure(comparison_figure(rows, title=f"study {study_name}: ensembles on the validation split"
                                            + (" (SYNTHETIC data)" if data.synthetic else "")), "comparison.png")
        if notes:
            parent.log_text("\n".join(notes) + "\n", "notes.txt")
        name = f"{study_name}{REGISTERED_SUFFIX}"
        registered = tracking.register_champion(
            model_uris[winner["candidate"]], name, alias=cfg.alias, run_id=winner["run_id"], tracking_uri=uri,
            tags={"candidate": winner["candidate"], "kind": winner["kind"], key: f"{winner[key]:.4f}",
                  "optuna.study": study_name})
        tracking.set_run_tags(winner["run_id"], {"ensemble.winner": "true"}, tracking_uri=uri)
        parent.set_tags({"winner": winner["candidate"], "winner.run_id": winner["run_id"],
                         "winner.registered_model": registered, "n_candidates": len(rows),
                         "winner.rule": rule, "select_metric": select_metric})
        parent.log_metrics({f"winner_{key}": float(winner[key]), "n_candidates": float(len(rows)),
                            "comparison_seconds": time.perf_counter() - started})
    for note in notes:
        log.warning("%s", note)
    return ComparisonReport(
        study_name=study_name, mode=cfg.mode, parent_run_id=parent.run_id, experiment_name=experiment,
        tracking_uri=uri, columns=columns, rows=tuple(rows), winner=winner["candidate"],
        winner_run_id=winner["run_id"], registered=registered, child_run_ids=child_ids, model_uris=model_uris,
        notes=tuple(notes), synthetic=bool(data.synthetic), seconds=time.perf_counter() - started,
        candidates=tuple(candidates))


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))
        else:
            out[key] = "null" if v is None else str(v) if not isinstance(v, Mapping) else "{}"
    return out
