"""Ensemble candidates from a study's members: voting, cross-fitted stacking, validation-CV stacking."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from ensembles.config import EnsembleConfig, balanced_second_stages
from ensembles.config import prior_twins as wants_prior_twins
from ensembles.crossfit import crossfit, cv_predict_proba, cv_splits, make_folds
from ensembles.embeddings import CNNEmbedder
from ensembles.second_stage import (
    WEIGHTABLE,
    allowed_params,
    full_proba,
    make_second_stage,
    resolve_params,
)
from ensembles.serving import Branch, EnsembleModel, prior_corrected
from ensembles.stacking import BlendMeta, fit_meta, meta_predict, nested_cv_stack
from ensembles.voting import cv_weighted_vote, fit_vote_weights, soft_vote
from experiments.config import to_yaml
from experiments.ensembling.members import Member, StudyMembers, usable_members
from experiments.evaluation import classification_metrics
from experiments.serving.predictor import load_keras_model
from experiments.tracking.base import NullTracker
from experiments.tracking.loading import load_model_bundle
from experiments.tracking.runs import run_val_recall
from experiments.training import load_training_data, train
from experiments.tuning.search_space import (
    PrunerConfig,
    SamplerConfig,
    StudyConfig,
    TuneConfig,
    assignments,
    parse_search_space,
    suggest,
)
from experiments.tuning.storage import open_storage
from experiments.tuning.study import open_study
from experiments.tuning.workers import route_optuna_logging
from pipelines.errors import ConfigError, DataError
from pipelines.io import atomic_path, write_json_atomic
from pipelines.paths import default_cache_dir

log = logging.getLogger(__name__)


#: The study's reference trial as a candidate (``reference.yaml`` as shipped, trained inside the study).
REFERENCE_CANDIDATE = "reference"


@dataclass
class Candidate:
    """One compared model: honest validation probabilities, the deployable ensemble, what it is.

    ``train_rows``/``train_probs``: in crossfit mode, honest out-of-fold probabilities of the candidate's
    recipe on the training images ``train_rows`` (data-file indices), which widen the evidence behind the
    champion rule (``oof_selection``); None where the candidate has none (votes of study members).
    """

    name: str
    kind: str
    members: list[str]
    val_probs: np.ndarray
    estimate: str
    model: Any  # ensembles.serving.EnsembleModel
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    train_rows: np.ndarray | None = None
    train_probs: np.ndarray | None = None


@dataclass
class BuildContext:
    """What the candidate builders share: config, data, members and their validation outputs."""

    cfg: EnsembleConfig
    data: Any  # experiments.training.TrainData
    members: StudyMembers
    tracking_uri: str
    y_val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    notes: list[str] = field(default_factory=list)
    by_size: dict[int, Any] = field(default_factory=dict)  # the study's data per data.size, loaded once

    @property
    def n_classes(self) -> int:
        return self.data.num_classes

    @property
    def select_metric(self) -> str:
        """The metric the champion is chosen by (``study`` resolved to the study's metric)."""
        return self.members.metric if self.cfg.select_metric == "study" else self.cfg.select_metric

    @property
    def prior_twins(self) -> bool:
        """Whether prior-corrected twins join the comparison (``prior_correction``, see the config)."""
        return wants_prior_twins(self.cfg, self.select_metric)

    @property
    def balanced(self) -> bool:
        """Whether second stages weight the classes equally (``class_weights``, see the config)."""
        return balanced_second_stages(self.cfg, self.select_metric)


def _embedder(model: Any, *, model_id: str, tta: bool, batch_size: int) -> Any:
    return CNNEmbedder(model, tta=tta, batch_size=batch_size, model_id=model_id).fit()


def _make_factory(name: str, params: Mapping[str, Any], cfg: EnsembleConfig, balanced: bool) -> Callable[[], Any]:
    # one thread per model unless configured: OpenMP thread pools thrash when cores are shared
    return functools.partial(make_second_stage, name, dict(params), seed=cfg.seed, n_jobs=cfg.n_jobs or 1,
                             balanced=balanced and name in WEIGHTABLE)


def note_class_weights(ctx: BuildContext) -> None:
    """Say in the comparison's notes that second stages weight classes (a second stage that cannot -
    refused by the config under ``balanced`` - is fit unweighted under ``auto``)."""
    if not ctx.balanced:
        return
    unweighted = [name for name in ctx.cfg.second_stage if name not in WEIGHTABLE]
    ctx.notes.append(f"second stages fit with balanced class weights (selection metric {ctx.select_metric})"
                     + (f"; {', '.join(unweighted)} cannot weight classes and is fit unweighted" if unweighted else ""))


def _branch(model: Any, member_cfg: Any, *, tta: bool, name: str, run_id: str | None,
            second: Any = None, meta: Any = None) -> Any:
    return Branch(cnn=model, size=int(member_cfg.data.size), crop=int(member_cfg.data.crop), tta=bool(tta),
                  second=second, meta=meta, name=name, run_id=run_id)


def _ensemble(ctx: BuildContext, kind: str, branches: list[Any], *, weights: Any = None, description: str = "") -> Any:
    return EnsembleModel(kind=kind, branches=branches, class_names=tuple(ctx.data.class_names),
                         class_slugs=tuple(ctx.data.class_slugs), weights=weights, description=description,
                         batch_size=ctx.cfg.embeddings.batch_size)


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

    payload = json.dumps({"run": best.run_id, "fingerprint": data.fingerprint, "recipe": to_yaml(recipe),
                          "train": hashlib.sha256(np.asarray(data.train, np.int64).tobytes()).hexdigest(),
                          "val": hashlib.sha256(np.asarray(data.val, np.int64).tobytes()).hexdigest(),
                          "folds": n_folds, "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_crossfit(ctx: BuildContext) -> CrossfitResult:
    """Train the best trial's recipe on K folds of train; out-of-fold and validation outputs per fold.

    Fold models are cached (``<cache>/crossfit/<key>/fold<k>.keras``) so a re-run reuses them.
    """
    import keras

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
    recall_lookup = functools.partial(run_val_recall, tracking_uri=ctx.tracking_uri)

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
        result = train(recipe, NullTracker(), data=fold_data, log_model=False, verbose=0, recall_lookup=recall_lookup,
                       model_loader=functools.partial(load_keras_model, tracking_uri=ctx.tracking_uri))
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


def _space_for(cfg: EnsembleConfig) -> dict[str, Any]:
    """``{model: SearchSpace}`` from ``tune.search_space`` (keys ``<model>.<param>``), validated."""

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
                      cfg: EnsembleConfig, n_classes: int, *, balanced: bool = False) -> tuple[dict[str, Any], float]:
    """Small Optuna study (seeded TPE, through :mod:`experiments.tuning`) over ``space`` for ``name``.

    The objective is the cross-validated ``tune.metric`` averaged over ``fit_sets`` (each an
    ``(X, y)`` the second stage is fit on); the study lives in a throw-away SQLite file. Returns
    (best params, best objective: accuracy, or minus the log loss).
    """

    def objective(trial: Any) -> float:
        params = resolve_params(name, {**base, **assignments(space, suggest(trial, space))})
        scores = []
        for X, y in fit_sets:
            probs = cv_predict_proba(_make_factory(name, params, cfg, balanced), X, y, n_classes,
                                     cv_splits(y, cfg.cv_folds, seed=cfg.seed))
            m = classification_metrics(y, probs, [str(i) for i in range(n_classes)])
            scores.append(-m["log_loss"] if cfg.tune.metric == "log_loss" else m["accuracy"])
        return float(np.mean(scores))

    study_cfg = StudyConfig(name=f"second-stage-{name}", n_trials=cfg.tune.n_trials,
                            sampler=SamplerConfig("tpe", {"seed": cfg.seed, "multivariate": True}),
                            pruner=PrunerConfig("none", {}))
    with tempfile.TemporaryDirectory(prefix="galaxy10-tune-") as tmp:
        route_optuna_logging(logging.WARNING)
        storage = open_storage(f"sqlite:///{Path(tmp) / 'second_stage.db'}")
        study = open_study(TuneConfig(base=None, run={}, study=study_cfg, space=space), storage)
        study.optimize(objective, n_trials=cfg.tune.n_trials)
        best_params, best_value = dict(study.best_params), float(study.best_value)
        storage.engine.dispose()
    best = resolve_params(name, {**base, **assignments(space, best_params)})
    log.info("tuned %s over %d trials: %s (cv %s %.4f)", name, cfg.tune.n_trials, best, cfg.tune.metric,
             abs(best_value))
    return best, best_value


def _tuned_params(ctx: BuildContext, fit_sets: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, Any]]:
    params = {name: dict(p) for name, p in ctx.cfg.second_stage.items()}
    if ctx.cfg.tune.n_trials <= 0:
        return params
    for name, space in _space_for(ctx.cfg).items():
        params[name], _ = tune_second_stage(name, params[name], space, fit_sets, ctx.cfg, ctx.n_classes,
                                            balanced=ctx.balanced)
    return params


def reference_candidates(ctx: BuildContext, models: Sequence[Any], member_probs: Sequence[np.ndarray]
                         ) -> list[Candidate]:
    """``reference``: the study's reference trial (``reference.yaml`` as shipped) alone, unless it is the best
    trial already. The champion rule never crowns a model that trails it (:mod:`.champion`)."""
    members = ctx.members.members
    i = next((i for i, m in enumerate(members) if m.reference and i > 0), None)
    if i is None:
        return []
    m = members[i]
    return [Candidate(REFERENCE_CANDIDATE, "cnn", [m.name], member_probs[i], "validation split",
                      _ensemble(ctx, "cnn", [_branch(models[i], m.cfg, tta=m.cfg.augment.tta, name=m.name,
                                                     run_id=m.run_id)],
                                description=f"{m.name}: the reference recipe (reference.yaml as shipped)"),
                      {"trial_number": m.trial_number})]


def vote_candidates(ctx: BuildContext, models: Sequence[Any], member_probs: Sequence[np.ndarray]) -> list[Candidate]:
    """``vote-top<k>`` (equal weights) and ``wvote-top<k>`` (weights fit on val, scored by CV)."""

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


def backbone_candidates(ctx: BuildContext, models: Sequence[Any], member_probs: Sequence[np.ndarray]) -> list[
        Candidate]:
    """Across backbones: a soft vote of each backbone's best trial, and per-backbone second stages averaged.

    Each second stage is fit on its own backbone's validation embeddings and scored by validation CV; the
    candidate averages their out-of-fold probabilities, so the table shows whether diversity beats the best CNN.
    """
    first: dict[str, int] = {}
    for i, m in enumerate(ctx.members.members):
        first.setdefault(m.backbone, i)
    if len(first) < 2:
        return []
    reps = list(first.values())
    members = [ctx.members.members[i] for i in reps]
    names = [f"{m.name} ({m.backbone})" for m in members]
    branches = [_branch(models[i], m.cfg, tta=m.cfg.augment.tta, name=m.name, run_id=m.run_id)
                for i, m in zip(reps, members)]
    start = time.perf_counter()
    out = [Candidate("vote-backbones", "vote", names, soft_vote([member_probs[i] for i in reps]),
                     "validation split (equal weights over the best trial of each backbone, nothing fit on it)",
                     _ensemble(ctx, "vote", branches, description=f"soft vote of {', '.join(names)}"),
                     {"backbones": ",".join(first)}, time.perf_counter() - start)]
    cfg, n, y = ctx.cfg, ctx.n_classes, ctx.y_val
    splits = cv_splits(y, cfg.cv_folds, seed=cfg.seed)
    embedded = []
    for i, m in zip(reps, members):
        data = member_data(ctx, m)
        emb = _embedder(models[i], model_id=m.run_id, tta=cfg.embeddings.tta, batch_size=cfg.embeddings.batch_size)
        embedded.append(emb.embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint).embeddings)
    for name in cfg.second_stage:
        start = time.perf_counter()
        factory = _make_factory(name, dict(cfg.second_stage[name]), cfg, ctx.balanced)
        oof = np.mean([cv_predict_proba(factory, X, y, n, splits) for X in embedded], axis=0)
        finals = [factory().fit(X, y) for X in embedded]
        out.append(Candidate(
            f"gbm-{name}-backbones", "gbm", [f"{nm}+{name}" for nm in names], oof,
            f"validation {len(splits)}-fold CV (one {name} per backbone on its own validation embeddings, averaged)",
            _ensemble(ctx, "gbm", [_branch(models[i], m.cfg, tta=cfg.embeddings.tta, name=f"{m.name}+{name}",
                                           run_id=m.run_id, second=est) for i, m, est in zip(reps, members, finals)],
                      description=f"{name} per backbone ({', '.join(first)}), probabilities averaged"),
            {"backbones": ",".join(first), **{f"{name}.{k}": v for k, v in dict(cfg.second_stage[name]).items()}},
            time.perf_counter() - start))
    return out


def meta_text(meta: Any) -> str:
    """How a fitted meta-learner combines its inputs, for a candidate's description."""
    if isinstance(meta, BlendMeta):
        return f"blend (CNN weight {meta.weight_:.2f}, chosen by out-of-fold log loss)"
    return "logistic meta-learner"


def meta_params(cfg: EnsembleConfig, meta: Any) -> dict[str, Any]:
    """The meta-learner's logged parameters: its kind and its C or fitted weight."""
    if isinstance(meta, BlendMeta):
        return {"meta": "blend", "meta.cnn_weight": meta.weight_}
    return {"meta": "logistic", "meta.C": cfg.stack.C}


def crossfit_candidates(ctx: BuildContext, cf: CrossfitResult) -> list[Candidate]:
    """Candidates from the K fold models: their average, and per-fold second stages (+ stacking)."""
    import keras

    cfg, data = ctx.cfg, ctx.data
    best = ctx.members.best
    oof = cf.oof
    n, k = ctx.n_classes, len(cf.model_paths)
    y_oof = data.labels[oof.indices]
    models = [keras.models.load_model(p, safe_mode=True, compile=False) for p in cf.model_paths]
    fold_names = [f"{best.name}/fold-{i}" for i in range(k)]
    tta = cfg.embeddings.tta
    wide = cfg.oof_selection  # out-of-fold train probabilities for the champion rule
    rows = oof.indices if wide else None
    out = [Candidate(
        f"vote-crossfit{k}", "vote", fold_names, soft_vote(cf.val_probs),
        "validation split (fold models trained on train folds only)",
        _ensemble(ctx, "vote", [_branch(m, cf.recipe, tta=tta, name=nm, run_id=None) for m, nm in zip(models, fold_names)],
                  description=f"average of the {k} cross-fitting fold CNNs of {best.name}"),
        {"folds": k}, train_rows=rows, train_probs=oof.probs if wide else None)]
    fit_sets = [(oof.embeddings[oof.rows_of(i)], y_oof[oof.rows_of(i)]) for i in range(k)]
    params = _tuned_params(ctx, fit_sets)
    for name, p in params.items():
        start = time.perf_counter()
        factory = _make_factory(name, p, cfg, ctx.balanced)
        seconds = []
        fitted, val_out, second_oof = [], [], np.zeros((len(oof.indices), n))
        for i, (X, y) in enumerate(fit_sets):
            t0 = time.perf_counter()
            est = factory().fit(X, y)
            seconds.append(time.perf_counter() - t0)
            fitted.append(est)
            val_out.append(full_proba(est, cf.val_embeddings[i], n))
            if wide or name in cfg.stack.second_stage:  # inner CV inside the fold: out-of-fold outputs
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
            time.perf_counter() - start, train_rows=rows, train_probs=second_oof if wide else None))
        if name in cfg.stack.second_stage:
            start = time.perf_counter()
            meta = fit_meta([oof.probs, second_oof], y_oof, C=cfg.stack.C, seed=cfg.seed, kind=cfg.stack.meta)
            val_stack = np.mean([meta_predict(meta, [cf.val_probs[i], val_out[i]], n) for i in range(k)], axis=0)
            train_stack = crossfit_meta(oof, second_oof, y_oof, cfg, n) if wide else None
            members = [f"{fn}+{name}+meta" for fn in fold_names]
            out.append(Candidate(
                f"stack-{name}", "stack", members, val_stack,
                f"validation split ({cfg.stack.meta} meta-learner fit on out-of-fold train probabilities of fold "
                f"CNNs and in-fold cross-validated {name})",
                _ensemble(ctx, "stack", [_branch(m, cf.recipe, tta=tta, name=mn, run_id=None, second=e, meta=meta)
                                         for m, mn, e in zip(models, members, fitted)],
                          description=f"{meta_text(meta)} on fold CNN + {name} probabilities, averaged over folds"),
                {**meta_params(cfg, meta), **{f"{name}.{kk}": v for kk, v in p.items()}},
                time.perf_counter() - start, train_rows=rows, train_probs=train_stack))
    return out


def crossfit_meta(oof: Any, second_oof: np.ndarray, y_oof: np.ndarray, cfg: EnsembleConfig, n: int) -> np.ndarray:
    """Honest stack probabilities on the training split: for each fold's rows, a meta-learner fit on the
    other folds' rows (its inputs are out-of-fold already)."""
    out = np.zeros((len(y_oof), n))
    folds = np.unique(oof.fold_of)
    for i in folds:
        rows, rest = oof.rows_of(int(i)), np.flatnonzero(oof.fold_of != i)
        meta = fit_meta([oof.probs[rest], second_oof[rest]], y_oof[rest], C=cfg.stack.C, seed=cfg.seed,
                        kind=cfg.stack.meta)
        out[rows] = meta_predict(meta, [oof.probs[rows], second_oof[rows]], n)
    return out


def val_cv_candidates(ctx: BuildContext, best_model: Any) -> list[Candidate]:
    """Second stages (and stacks) fit on the best CNN's validation embeddings, scored by (nested) CV."""

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
        factory = _make_factory(name, p, cfg, ctx.balanced)
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
                                     seed=cfg.seed, kind=cfg.stack.meta)
            meta = fit_meta([cnn_probs, oof], y, C=cfg.stack.C, seed=cfg.seed, kind=cfg.stack.meta)
            out.append(Candidate(
                f"stack-{name}", "stack", [best.name, f"{best.name}+{name}"], honest,
                f"validation nested {len(splits)}-fold CV (meta-learner and {name} refit inside each fold){note}",
                _ensemble(ctx, "stack", [_branch(best_model, best.cfg, tta=tta, name=f"{best.name}+{name}+meta",
                                                 run_id=best.run_id, second=final, meta=meta)],
                          description=f"{meta_text(meta)} on {best.name} + {name} probabilities"),
                {**meta_params(cfg, meta), **{f"{name}.{kk}": v for kk, v in p.items()}},
                time.perf_counter() - start))
    return out


def member_data(ctx: BuildContext, member: Any) -> Any:
    """The study's data resized for ``member`` (members may differ in ``data.size``; each size is loaded
    once per comparison), its split checked."""
    size = int(member.cfg.data.size)
    ctx.by_size.setdefault(int(ctx.data.size), ctx.data)
    if size not in ctx.by_size:
        ctx.by_size[size] = load_training_data(member.cfg.data, ctx.data.path)
    data = ctx.by_size[size]
    if not np.array_equal(data.val, ctx.data.val):
        raise DataError(f"{member.name}'s validation split differs from the best trial's; the study's data changed")
    return data


def member_val_probs(ctx: BuildContext, models: Sequence[Any]) -> list[np.ndarray]:
    """Each member CNN's validation probabilities (its own TTA setting), checked against its run."""

    out = []
    for model, m in zip(models, ctx.members.members):
        data = member_data(ctx, m)
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

    members, notes = usable_members(members, data)
    ctx = BuildContext(cfg=cfg, data=data, members=members, tracking_uri=tracking_uri,
                   y_val=np.asarray(data.labels[data.val], dtype=np.int64), notes=list(members.notes) + notes)
    note_class_weights(ctx)
    facts: dict[str, Any] = {}
    cf = None
    if cfg.mode == "crossfit":  # before loading the members: training clears the Keras session
        start = time.perf_counter()
        cf = run_crossfit(ctx)
        facts.update(crossfit_key=cf.key, crossfit_cached_folds=cf.cached_folds,
                     crossfit_seconds=time.perf_counter() - start,
                     crossfit_records=[{"fold": r.number, "trained_on": len(r.trained_on), "embedded": len(r.embedded)}
                                       for r in cf.oof.records])
    models = [load_model_bundle(m.model_uri).model for m in members.members]
    probs = member_val_probs(ctx, models)
    best = members.best
    wide = cf is not None and cfg.oof_selection
    candidates = [Candidate(
        "cnn-best", "cnn", [best.name], probs[0], "validation split (the study's own model selection used it)"
        + ("; on train, its recipe's fold CNNs out-of-fold" if wide else ""),
        _ensemble(ctx, "cnn", [_branch(models[0], best.cfg, tta=best.cfg.augment.tta, name=best.name,
                                       run_id=best.run_id)], description=f"{best.name} alone"),
        {"trial_number": best.trial_number}, train_rows=cf.oof.indices if wide else None,
        train_probs=cf.oof.probs if wide else None)]
    candidates += reference_candidates(ctx, models, probs)
    # BLAS/OpenMP pools sized to the machine thrash when its cores are shared (measured: a logistic
    # regression on 1080x256 embeddings took 36 s with 2 OpenBLAS threads on a busy 2-core box, 1.4 s with 1).
    with threadpool_limits(limits=cfg.n_jobs or 1), convergence_notes(ctx.notes):
        candidates += vote_candidates(ctx, models, probs)
        candidates += backbone_candidates(ctx, models, probs)
        if cf is not None:
            candidates += crossfit_candidates(ctx, cf)
        else:
            candidates += val_cv_candidates(ctx, models[0])
    if ctx.prior_twins:
        candidates += prior_twin_candidates(ctx, candidates)
    return candidates, ctx.notes, facts


#: Candidate kinds that get a prior-corrected twin (second stages and stacks: their probabilities
#: follow the class counts they were fit on).
PRIOR_KINDS = ("gbm", "stack")


def training_class_shares(ctx: BuildContext) -> np.ndarray:
    """Class shares of the training split (a class absent from it gets a tiny share, never zero)."""
    counts = np.bincount(ctx.data.labels[ctx.data.train], minlength=ctx.n_classes).astype(np.float64)
    counts = np.maximum(counts, 0.1)
    return counts / counts.sum()


def prior_twin_candidates(ctx: BuildContext, candidates: Sequence[Candidate]) -> list[Candidate]:
    """``<name>+prior`` for every second-stage and stacking candidate: its output divided by the training
    class shares and renormalised, the decision for balanced accuracy (see README, "Why stacking lost")."""
    prior = training_class_shares(ctx)
    twins = []
    for cand in candidates:
        if cand.kind not in PRIOR_KINDS:
            continue
        model = replace(cand.model, class_prior=prior,
                        description=f"{cand.model.description}; divided by the training class shares")
        twins.append(Candidate(f"{cand.name}+prior", cand.kind, list(cand.members),
                               prior_corrected(cand.val_probs, prior), f"{cand.estimate}, prior-corrected",
                               model, {**cand.params, "class_prior": " ".join(f"{p:.4f}" for p in prior)},
                               cand.seconds, train_rows=cand.train_rows,
                               train_probs=None if cand.train_probs is None else prior_corrected(cand.train_probs,
                                                                                                 prior)))
    if twins:
        ctx.notes.append(f"{len(twins)} prior-corrected twins (+prior): second-stage and stacking outputs divided "
                         f"by the training class shares (selection metric {ctx.select_metric})")
    return twins


@contextlib.contextmanager
def convergence_notes(notes: list[str]) -> Iterator[None]:
    """Collect scikit-learn's multi-line ``ConvergenceWarning`` messages into one logged line and a note.

    A second stage that stops at its iteration limit is still used as fitted; the user reads one line
    (and the comparison run's notes) instead of a ten-line warning per fit. Other warnings pass through.
    """

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
