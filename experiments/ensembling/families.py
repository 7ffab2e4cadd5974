"""The candidate families: the reference, votes, backbones, cross-fitted and validation-CV stacks, prior twins."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ensembles.crossfit import cv_predict_proba, cv_splits
from ensembles.ensemble_model import prior_corrected
from ensembles.second_stage import full_proba
from ensembles.stacking import BlendMeta, fit_meta, meta_predict, nested_cv_stack
from ensembles.voting import cv_weighted_vote, fit_vote_weights, soft_vote
from experiments.ensembling.context import (
    PRIOR_KINDS,
    REFERENCE_CANDIDATE,
    BuildContext,
    Candidate,
    branch_of,
    embedder,
    ensemble_of,
    member_data,
    second_stage_factory,
    training_class_shares,
)
from experiments.ensembling.fold_cnns import CrossfitResult
from experiments.ensembling.second_stage_tuning import tuned_models, tuned_params
from experiments.settings.ensemble import EnsembleConfig
from models.layers import load_keras_file

log = logging.getLogger(__name__)


def reference_candidates(
    ctx: BuildContext, models: Sequence[Any], member_probs: Sequence[np.ndarray]
) -> list[Candidate]:
    """``reference``: the study's reference trial (``reference.yaml`` as shipped) alone, unless it is the best
    trial already. The champion rule never crowns a model that trails it (:mod:`.champion`)."""
    members = ctx.members.members
    i = next((i for i, m in enumerate(members) if m.reference and i > 0), None)
    if i is None:
        return []
    m = members[i]
    return [
        Candidate(
            REFERENCE_CANDIDATE,
            "cnn",
            [m.name],
            member_probs[i],
            "validation split",
            ensemble_of(
                ctx,
                "cnn",
                [branch_of(models[i], m.cfg, tta=m.cfg.augment.tta, name=m.name, run_id=m.run_id)],
                description=f"{m.name}: the reference recipe (reference.yaml as shipped)",
            ),
            {"trial_number": m.trial_number},
        )
    ]


def vote_candidates(ctx: BuildContext, models: Sequence[Any], member_probs: Sequence[np.ndarray]) -> list[Candidate]:
    """``vote-top<k>`` (equal weights) and ``wvote-top<k>`` (weights fit on val, scored by CV)."""

    members = ctx.members.members
    if len(members) < 2:
        ctx.notes.append("fewer than 2 trials with models: no voting candidates")
        return []
    k = len(members)
    names = [m.name for m in members]
    branches = [
        branch_of(model, m.cfg, tta=m.cfg.augment.tta, name=m.name, run_id=m.run_id)
        for model, m in zip(models, members)
    ]
    out = []
    start = time.perf_counter()
    probs = soft_vote(member_probs)
    out.append(
        Candidate(
            f"vote-top{k}",
            "vote",
            names,
            probs,
            "validation split (equal weights, nothing fit on it)",
            ensemble_of(ctx, "vote", branches, description=f"soft vote of {', '.join(names)}"),
            {"weights": "equal"},
            time.perf_counter() - start,
        )
    )
    method = ctx.cfg.vote.weighted
    if method is not None:
        start = time.perf_counter()
        splits = cv_splits(ctx.y_val, ctx.cfg.cv_folds, seed=ctx.cfg.seed)
        oof, _ = cv_weighted_vote(member_probs, ctx.y_val, splits, method=method)
        weights = fit_vote_weights(member_probs, ctx.y_val, method=method)
        params = {"weights_method": method, **{f"weight.{n}": f"{w:.4f}" for n, w in zip(names, weights)}}
        out.append(
            Candidate(
                f"wvote-top{k}",
                "vote",
                names,
                oof,
                f"validation {len(splits)}-fold CV (weights fit on the other folds by {method}); "
                "deployed weights fit on the whole validation split",
                ensemble_of(
                    ctx,
                    "vote",
                    branches,
                    weights=weights,
                    description=f"weighted vote ({method}) of {', '.join(names)}",
                ),
                params,
                time.perf_counter() - start,
            )
        )
    return out


def backbone_candidates(
    ctx: BuildContext, models: Sequence[Any], member_probs: Sequence[np.ndarray]
) -> list[Candidate]:
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
    branches = [
        branch_of(models[i], m.cfg, tta=m.cfg.augment.tta, name=m.name, run_id=m.run_id) for i, m in zip(reps, members)
    ]
    start = time.perf_counter()
    out = [
        Candidate(
            "vote-backbones",
            "vote",
            names,
            soft_vote([member_probs[i] for i in reps]),
            "validation split (equal weights over the best trial of each backbone, nothing fit on it)",
            ensemble_of(ctx, "vote", branches, description=f"soft vote of {', '.join(names)}"),
            {"backbones": ",".join(first)},
            time.perf_counter() - start,
        )
    ]
    cfg, n, y = ctx.cfg, ctx.n_classes, ctx.y_val
    splits = cv_splits(y, cfg.cv_folds, seed=cfg.seed)
    embedded = []
    for i, m in zip(reps, members):
        data = member_data(ctx, m)
        emb = embedder(models[i], model_id=m.run_id, tta=cfg.embeddings.tta, batch_size=cfg.embeddings.batch_size)
        embedded.append(emb.embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint).embeddings)
    for name in cfg.second_stage:
        start = time.perf_counter()
        factory = second_stage_factory(name, dict(cfg.second_stage[name]), cfg, ctx.balanced)
        oof = np.mean([cv_predict_proba(factory, X, y, n, splits) for X in embedded], axis=0)
        finals = [factory().fit(X, y) for X in embedded]
        out.append(
            Candidate(
                f"gbm-{name}-backbones",
                "gbm",
                [f"{nm}+{name}" for nm in names],
                oof,
                f"validation {len(splits)}-fold CV (one {name} per backbone on its own validation embeddings, "
                "averaged)",
                ensemble_of(
                    ctx,
                    "gbm",
                    [
                        branch_of(
                            models[i],
                            m.cfg,
                            tta=cfg.embeddings.tta,
                            name=f"{m.name}+{name}",
                            run_id=m.run_id,
                            second=est,
                        )
                        for i, m, est in zip(reps, members, finals)
                    ],
                    description=f"{name} per backbone ({', '.join(first)}), probabilities averaged",
                ),
                {"backbones": ",".join(first), **{f"{name}.{k}": v for k, v in dict(cfg.second_stage[name]).items()}},
                time.perf_counter() - start,
            )
        )
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
    cfg, data = ctx.cfg, ctx.data
    best = ctx.members.best
    oof = cf.oof
    n, k = ctx.n_classes, len(cf.model_paths)
    y_oof = data.labels[oof.indices]
    models = [load_keras_file(p) for p in cf.model_paths]
    fold_names = [f"{best.name}/fold-{i}" for i in range(k)]
    tta = cfg.embeddings.tta
    wide = cfg.oof_selection  # out-of-fold train probabilities for the champion rule
    rows = oof.indices if wide else None
    out = [
        Candidate(
            f"vote-crossfit{k}",
            "vote",
            fold_names,
            soft_vote(cf.val_probs),
            "validation split (fold models trained on train folds only)",
            ensemble_of(
                ctx,
                "vote",
                [branch_of(m, cf.recipe, tta=tta, name=nm, run_id=None) for m, nm in zip(models, fold_names)],
                description=f"average of the {k} cross-fitting fold CNNs of {best.name}",
            ),
            {"folds": k},
            train_rows=rows,
            train_probs=oof.probs if wide else None,
        )
    ]
    fit_sets = [(oof.embeddings[oof.rows_of(i)], y_oof[oof.rows_of(i)]) for i in range(k)]
    params = tuned_params(ctx, fit_sets)
    for name, p in params.items():
        start = time.perf_counter()
        factory = second_stage_factory(name, p, cfg, ctx.balanced)
        seconds = []
        fitted, val_out, second_oof = [], [], np.zeros((len(oof.indices), n))
        for i, (X, y) in enumerate(fit_sets):
            t0 = time.perf_counter()
            est = factory().fit(X, y)
            seconds.append(time.perf_counter() - t0)
            fitted.append(est)
            val_out.append(full_proba(est, cf.val_embeddings[i], n))
            if wide or name in cfg.stack.second_stage:  # inner CV inside the fold: out-of-fold outputs
                splits = cv_splits(y, cfg.cv_folds, seed=cfg.seed)
                second_oof[oof.rows_of(i)] = cv_predict_proba(factory, X, y, n, splits)
        tuned = (
            " (hyper-parameters tuned by CV on the training folds' out-of-fold embeddings)"
            if cfg.tune.n_trials and name in tuned_models(cfg)
            else ""
        )
        members = [f"{fn}+{name}" for fn in fold_names]
        out.append(
            Candidate(
                f"gbm-{name}",
                "gbm",
                members,
                np.mean(val_out, axis=0),
                f"validation split (second stages fit on out-of-fold train embeddings, one per fold model){tuned}",
                ensemble_of(
                    ctx,
                    "gbm",
                    [
                        branch_of(m, cf.recipe, tta=tta, name=mn, run_id=None, second=e)
                        for m, mn, e in zip(models, members, fitted)
                    ],
                    description=f"{name} on the embeddings of each of {k} fold CNNs, averaged",
                ),
                {**{f"{name}.{kk}": v for kk, v in p.items()}, "fit_seconds_per_fold": f"{np.mean(seconds):.3f}"},
                time.perf_counter() - start,
                train_rows=rows,
                train_probs=second_oof if wide else None,
            )
        )
        if name in cfg.stack.second_stage:
            start = time.perf_counter()
            meta = fit_meta([oof.probs, second_oof], y_oof, C=cfg.stack.C, seed=cfg.seed, kind=cfg.stack.meta)
            val_stack = np.mean([meta_predict(meta, [cf.val_probs[i], val_out[i]], n) for i in range(k)], axis=0)
            train_stack = crossfit_meta(oof, second_oof, y_oof, cfg, n) if wide else None
            members = [f"{fn}+{name}+meta" for fn in fold_names]
            out.append(
                Candidate(
                    f"stack-{name}",
                    "stack",
                    members,
                    val_stack,
                    f"validation split ({cfg.stack.meta} meta-learner fit on out-of-fold train probabilities of fold "
                    f"CNNs and in-fold cross-validated {name})",
                    ensemble_of(
                        ctx,
                        "stack",
                        [
                            branch_of(m, cf.recipe, tta=tta, name=mn, run_id=None, second=e, meta=meta)
                            for m, mn, e in zip(models, members, fitted)
                        ],
                        description=f"{meta_text(meta)} on fold CNN + {name} probabilities, averaged over folds",
                    ),
                    {**meta_params(cfg, meta), **{f"{name}.{kk}": v for kk, v in p.items()}},
                    time.perf_counter() - start,
                    train_rows=rows,
                    train_probs=train_stack,
                )
            )
    return out


def crossfit_meta(oof: Any, second_oof: np.ndarray, y_oof: np.ndarray, cfg: EnsembleConfig, n: int) -> np.ndarray:
    """Honest stack probabilities on the training split: for each fold's rows, a meta-learner fit on the
    other folds' rows (its inputs are out-of-fold already)."""
    out = np.zeros((len(y_oof), n))
    folds = np.unique(oof.fold_of)
    for i in folds:
        rows, rest = oof.rows_of(int(i)), np.flatnonzero(oof.fold_of != i)
        meta = fit_meta(
            [oof.probs[rest], second_oof[rest]], y_oof[rest], C=cfg.stack.C, seed=cfg.seed, kind=cfg.stack.meta
        )
        out[rows] = meta_predict(meta, [oof.probs[rows], second_oof[rows]], n)
    return out


def val_cv_candidates(ctx: BuildContext, best_model: Any) -> list[Candidate]:
    """Second stages (and stacks) fit on the best CNN's validation embeddings, scored by (nested) CV."""

    cfg, data = ctx.cfg, ctx.data
    best = ctx.members.best
    n = ctx.n_classes
    y = ctx.y_val
    tta = cfg.embeddings.tta
    emb = embedder(best_model, model_id=best.run_id, tta=tta, batch_size=cfg.embeddings.batch_size)
    val = emb.embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint)
    X, cnn_probs = val.embeddings, val.probs
    splits = cv_splits(y, cfg.cv_folds, seed=cfg.seed)
    params = tuned_params(ctx, [(X, y)])
    out = []
    for name, p in params.items():
        start = time.perf_counter()
        factory = second_stage_factory(name, p, cfg, ctx.balanced)
        oof = cv_predict_proba(factory, X, y, n, splits)
        t0 = time.perf_counter()
        final = factory().fit(X, y)
        fit_s = time.perf_counter() - t0
        tuned = cfg.tune.n_trials > 0 and name in tuned_models(cfg)
        note = " (optimistic: hyper-parameters tuned on the same validation folds)" if tuned else ""
        out.append(
            Candidate(
                f"gbm-{name}",
                "gbm",
                [f"{best.name}+{name}"],
                oof,
                f"validation {len(splits)}-fold CV (fit on the best CNN's validation embeddings){note}",
                ensemble_of(
                    ctx,
                    "gbm",
                    [
                        branch_of(
                            best_model, best.cfg, tta=tta, name=f"{best.name}+{name}", run_id=best.run_id, second=final
                        )
                    ],
                    description=f"{name} on {best.name}'s embeddings, fit on the validation split",
                ),
                {**{f"{name}.{kk}": v for kk, v in p.items()}, "fit_seconds": f"{fit_s:.3f}"},
                time.perf_counter() - start,
            )
        )
        if name in cfg.stack.second_stage:
            start = time.perf_counter()
            honest = nested_cv_stack(
                cnn_probs,
                X,
                y,
                factory,
                n,
                splits,
                inner_folds=cfg.cv_folds,
                C=cfg.stack.C,
                seed=cfg.seed,
                kind=cfg.stack.meta,
            )
            meta = fit_meta([cnn_probs, oof], y, C=cfg.stack.C, seed=cfg.seed, kind=cfg.stack.meta)
            out.append(
                Candidate(
                    f"stack-{name}",
                    "stack",
                    [best.name, f"{best.name}+{name}"],
                    honest,
                    f"validation nested {len(splits)}-fold CV (meta-learner and {name} refit inside each fold){note}",
                    ensemble_of(
                        ctx,
                        "stack",
                        [
                            branch_of(
                                best_model,
                                best.cfg,
                                tta=tta,
                                name=f"{best.name}+{name}+meta",
                                run_id=best.run_id,
                                second=final,
                                meta=meta,
                            )
                        ],
                        description=f"{meta_text(meta)} on {best.name} + {name} probabilities",
                    ),
                    {**meta_params(cfg, meta), **{f"{name}.{kk}": v for kk, v in p.items()}},
                    time.perf_counter() - start,
                )
            )
    return out


def prior_twin_candidates(ctx: BuildContext, candidates: Sequence[Candidate]) -> list[Candidate]:
    """``<name>+prior`` for every second-stage and stacking candidate: its output divided by the training
    class shares and renormalised, the decision for balanced accuracy (see README, "Why stacking lost")."""
    prior = training_class_shares(ctx)
    twins = []
    for cand in candidates:
        if cand.kind not in PRIOR_KINDS:
            continue
        model = replace(
            cand.model, class_prior=prior, description=f"{cand.model.description}; divided by the training class shares"
        )
        twins.append(
            Candidate(
                f"{cand.name}+prior",
                cand.kind,
                list(cand.members),
                prior_corrected(cand.val_probs, prior),
                f"{cand.estimate}, prior-corrected",
                model,
                {**cand.params, "class_prior": " ".join(f"{p:.4f}" for p in prior)},
                cand.seconds,
                train_rows=cand.train_rows,
                train_probs=None if cand.train_probs is None else prior_corrected(cand.train_probs, prior),
            )
        )
    if twins:
        ctx.notes.append(
            f"{len(twins)} prior-corrected twins (+prior): second-stage and stacking outputs divided "
            f"by the training class shares (selection metric {ctx.select_metric})"
        )
    return twins
