"""Pruning at equal epochs, never before the epochs finished trials needed: steps, the floor, the cuts.

A trial reports its metric once per epoch. Without cross-validation the step is the epoch; with K folds
it is ``fold * STEP_STRIDE + epoch``, so "fold 2, epoch 5" is the same step for every trial whatever its
epoch budget (a trial of 8 epochs and one of 50 are compared at equal epochs of equal folds).

:class:`FloorPruner` wraps the configured Optuna pruner and refuses to prune a trial before epoch
``min_epochs`` of a fold. ``min_epochs: auto`` (the default) is the median over the study's COMPLETE
trials of the epochs their first fold needed to reach its best value (the reference trial, trial 0, is
the first of them), so a slow starter is never judged before the epoch at which finished trials reached
their level; an integer pins it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

#: Steps per fold in a cross-validated trial's reports (epochs of one fit stay below it).
STEP_STRIDE = 1000


def step_of(fold: int, epoch: int) -> int:
    """The report step of ``epoch`` (1-based, as training reports it) in ``fold`` (0-based; 0 without
    cross-validation)."""
    if not 0 <= epoch < STEP_STRIDE:
        raise ValueError(f"epoch {epoch} outside 0..{STEP_STRIDE - 1}")
    return fold * STEP_STRIDE + epoch


def fold_epoch(step: int) -> tuple[int, int]:
    """``(fold, epoch)`` of a report step (fold 0-based, epoch 1-based)."""
    return divmod(int(step), STEP_STRIDE)


def epochs_needed(trial: FrozenTrial) -> int | None:
    """Epochs a finished trial's first fit needed to reach its best value, None if unknown."""
    best = trial.user_attrs.get("cv_best_epochs")
    if best:
        return int(best[0])
    if trial.user_attrs.get("best_epoch") is not None:
        return int(trial.user_attrs["best_epoch"])
    return None


def floor_epochs(trials: Sequence[FrozenTrial], min_epochs: int | str) -> int:
    """The pruning floor: ``min_epochs`` when an integer; for ``auto`` the median of
    :func:`epochs_needed` over the COMPLETE trials (0 when none has finished: the wrapped pruner's own
    start-up rules apply alone)."""
    if min_epochs != "auto":
        return int(min_epochs)
    needed = [n for t in trials if t.state == TrialState.COMPLETE for n in [epochs_needed(t)] if n is not None]
    return int(statistics.median(needed)) if needed else 0


class FloorPruner(optuna.pruners.BasePruner):
    """The configured pruner, asked only once a trial's current fit has run ``floor`` epochs."""

    def __init__(self, base: optuna.pruners.BasePruner, min_epochs: int | str = "auto") -> None:
        self.base = base
        self.min_epochs = min_epochs

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        _, epoch = fold_epoch(step)
        floor = floor_epochs(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), self.min_epochs)
        if epoch < floor:
            return False
        return self.base.prune(study, trial)


def describe_cut(trial: FrozenTrial, trials: Sequence[FrozenTrial]) -> str | None:
    """Where a PRUNED trial was cut and against what: its fold and epoch, its value there and the median
    of the COMPLETE trials' values at the same step; None for other trials."""
    if trial.state != TrialState.PRUNED or not trial.intermediate_values:
        return None
    step = max(trial.intermediate_values)
    fold, epoch = fold_epoch(step)
    others = [
        t.intermediate_values[step] for t in trials if t.state == TrialState.COMPLETE and step in t.intermediate_values
    ]
    where = f"epoch {epoch}" + (f" of fold {fold + 1}" if trial.user_attrs.get("cv_folds") else "")
    against = (
        f"median of {len(others)} COMPLETE trial(s) there {statistics.median(others):.4f}"
        if others
        else "no COMPLETE trial reached that step"
    )
    return f"trial {trial.number}: cut at {where} with {trial.intermediate_values[step]:.4f}; {against}"


def describe_cuts(trials: Sequence[Any]) -> list[str]:
    """:func:`describe_cut` of every PRUNED trial, in trial order."""
    return [line for t in trials for line in [describe_cut(t, trials)] if line]
