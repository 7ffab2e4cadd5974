"""Ensemble candidates from a study's members: voting, cross-fitted stacking, validation-CV stacking.

:func:`build_candidates` runs the families (``families``) on the study's members, with the fold CNNs
of ``fold_cnns`` in crossfit mode; ``context`` holds what they share.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from experiments.ensembling.context import (
    BuildContext,
    Candidate,
    branch_of,
    convergence_notes,
    ensemble_of,
    member_val_probs,
    note_class_weights,
)
from experiments.ensembling.families import (
    backbone_candidates,
    crossfit_candidates,
    prior_twin_candidates,
    reference_candidates,
    val_cv_candidates,
    vote_candidates,
)
from experiments.ensembling.fold_cnns import run_crossfit
from experiments.ensembling.members import StudyMembers, usable_members
from experiments.ensembling.pretrained import pretrained_candidates
from experiments.settings.ensemble import EnsembleConfig
from experiments.tracking.loading import load_keras_model
from experiments.tracking.workspace import Workspace
from pipelines.dataset import TrainData

log = logging.getLogger(__name__)


def build_candidates(
    cfg: EnsembleConfig, members: StudyMembers, data: TrainData, *, ws: Workspace
) -> tuple[list[Candidate], list[str], dict[str, Any]]:
    """Every candidate of the comparison with honest validation probabilities (see module docstring)."""

    members, notes = usable_members(members, data)
    ctx = BuildContext(
        cfg=cfg,
        data=data,
        members=members,
        ws=ws,
        y_val=np.asarray(data.labels[data.val], dtype=np.int64),
        notes=list(members.notes) + notes,
    )
    note_class_weights(ctx)
    facts: dict[str, Any] = {}
    cf = None
    if cfg.mode == "crossfit":  # before loading the members: training clears the Keras session
        start = time.perf_counter()
        cf = run_crossfit(ctx)
        facts.update(
            crossfit_key=cf.key,
            crossfit_cached_folds=cf.cached_folds,
            crossfit_seconds=time.perf_counter() - start,
            crossfit_records=[
                {"fold": r.number, "trained_on": len(r.trained_on), "embedded": len(r.embedded)} for r in cf.oof.records
            ],
        )
    models = [load_keras_model(m.model_uri, ws=ws).model for m in members.members]
    probs = member_val_probs(ctx, models)
    best = members.best
    wide = cf is not None and cfg.oof_selection
    candidates = [
        Candidate(
            "cnn-best",
            "cnn",
            [best.name],
            probs[0],
            "validation split (the study's own model selection used it)"
            + ("; on train, its recipe's fold CNNs out-of-fold" if wide else ""),
            ensemble_of(
                ctx,
                "cnn",
                [branch_of(models[0], best.cfg, tta=best.cfg.augment.tta, name=best.name, run_id=best.run_id)],
                description=f"{best.name} alone",
            ),
            {"trial_number": best.trial_number},
            train_rows=cf.oof.indices if wide else None,
            train_probs=cf.oof.probs if wide else None,
        )
    ]
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
        candidates += pretrained_candidates(ctx)
    if ctx.prior_twins:
        candidates += prior_twin_candidates(ctx, candidates)
    return candidates, ctx.notes, facts


#: Candidate kinds that get a prior-corrected twin (second stages and stacks: their probabilities
#: follow the class counts they were fit on).
