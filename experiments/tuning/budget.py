"""Wall-clock budgets: ``--budget 1h`` plans a study's folds and trials (and the ensemble's mode) to fit.

The plan rests on measured speed, not guesses: :func:`measure_epoch_seconds` trains a configuration for
three short epochs on a slice of the training split on this machine and scales the faster warm epoch to
the whole split. A study's cost is then arithmetic (:func:`plan_study`): every fit runs at most its
configured epochs; a cross-validated trial fits K folds on (K-1)/K of the images and once more on all
of them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from core.errors import ConfigError
from experiments.settings.ensemble import EnsembleConfig
from experiments.settings.run import RunConfig
from experiments.settings.tune import TuneConfig
from experiments.tracking.workspace import Workspace
from pipelines.dataset import TrainData

log = logging.getLogger(__name__)

#: Share of a budget kept for start-up, logging, plots and the registry (not training).
OVERHEAD_SHARE = 0.1
#: Views of 8-view test-time averaging (the final evaluation of a TTA fit costs more).
TTA_VIEWS = 8
#: Images of the training split a speed probe trains on (at most).
PROBE_IMAGES = 192


#: Epochs of a speed probe: the first is cold (tracing); the faster of the others is the warm epoch.
PROBE_EPOCHS = 3


def measure_epoch_seconds(cfg: RunConfig, data: TrainData, lookups: Any = None) -> tuple[float, float]:
    """``(seconds per epoch, seconds per fit besides its epochs)`` of ``cfg`` on the whole training split
    of ``data``, on this machine.

    Trains three epochs on at most :data:`PROBE_IMAGES` training images, validation on at most a quarter of
    that, no early stopping, nothing logged; the faster of the two warm epochs (a single warm epoch can be
    off by up to 2x on a busy machine; docs/BENCHMARKS.md, workflow run 4) is scaled by the share of images;
    what the first epoch and the set-up took beyond a warm epoch (building the model, tracing the graph, the
    final evaluation) is the per-fit overhead.
    """
    import keras

    from experiments.training import TrainOptions, prepare_run, train

    rng = np.random.default_rng(0)
    n_train = len(data.train)
    sub_train = np.sort(rng.choice(data.train, size=min(n_train, PROBE_IMAGES), replace=False))
    n_val = max(1, min(len(data.val), PROBE_IMAGES // 4))
    sub_val = np.asarray(data.val[:n_val])
    probe = replace(
        cfg,
        train=replace(cfg.train, epochs=PROBE_EPOCHS, patience=None, freeze_epochs=0),
        augment=replace(cfg.augment, auto_warmup_epochs=0, targets=None, tta=False),
    )
    stamps: list[float] = []
    started = time.perf_counter()
    train(
        prepare_run(probe, replace(data, train=sub_train, val=sub_val), **lookups or {}),
        None,
        TrainOptions(
            log_model=False, verbose=0, epoch_callback=lambda epoch, metrics: stamps.append(time.perf_counter())
        ),
    )
    ended = time.perf_counter()
    keras.backend.clear_session()
    warm = min(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    seconds = warm * (n_train + len(data.val) / 4) / (len(sub_train) + n_val / 4)
    overhead = max(0.0, (ended - started) - PROBE_EPOCHS * warm) * (TTA_VIEWS if cfg.augment.tta else 1) ** 0.5
    log.info(
        "speed probe: %s at %d px, %.2f s per epoch of %d training images, %.1f s per fit besides",
        cfg.model.name,
        cfg.data.crop,
        seconds,
        n_train,
        overhead,
    )
    return seconds, overhead


def fit_seconds(epochs: int, epoch_s: float, share: float = 1.0, overhead: float = 0.0) -> float:
    """A fit of at most ``epochs`` epochs on ``share`` of the training images, plus its set-up."""
    return epochs * epoch_s * share + overhead


def trial_seconds(epochs: int, epoch_s: float, folds: int, overhead: float = 0.0) -> float:
    """A trial's cost: K fold fits on (K-1)/K of the images plus the fit on all of them (or one fit)."""
    if folds:
        return folds * fit_seconds(epochs, epoch_s, (folds - 1) / folds, overhead) + fit_seconds(
            epochs, epoch_s, 1.0, overhead
        )
    return fit_seconds(epochs, epoch_s, 1.0, overhead)


@dataclass(frozen=True)
class StudyPlan:
    """What a study does within its budget, and the estimates behind it (seconds)."""

    budget_s: float
    folds: int
    n_trials: int
    refit: bool
    reference_s: float
    trial_s: float  # a tuned trial at most its epochs, averaged over the probed configurations
    trial_max_s: float  # the costliest probed configuration
    refit_s: float
    deadline_s: float  # no trial starts after this many seconds of the command
    epochs: int | None = None  # the tuned trials' epochs when the plan cut them, else None
    capped: int | None = None  # the trial cap (study.n_trials or --trials) when it, not the budget, bound the plan

    @property
    def planned_s(self) -> float:
        tuned = self.n_trials - (1 if self.reference_s else 0)
        return self.reference_s + tuned * self.trial_s + (self.refit_s if self.refit else 0.0)

    def describe(self) -> str:
        """One paragraph for the terminal: what was planned and why."""
        cv = f"{self.folds}-fold cross-validation" if self.folds else "the validation split alone (no folds)"
        refit = f"the refit of the best trial (~{self.refit_s:.0f} s)" if self.refit else "no refit (it would not fit)"
        tuned = self.n_trials - (1 if self.reference_s else 0)
        epochs = f", cut to {self.epochs} epochs" if self.epochs else ""
        reference = f"the reference recipe (~{self.reference_s:.0f} s) and " if self.reference_s else ""
        bound = (
            f" (capped by study.n_trials / --trials = {self.capped}, not by the budget)"
            if self.capped
            else " (as many as the budget holds)"
        )
        return (
            f"budget {self.budget_s:.0f} s: {self.n_trials} trial(s){bound} scored by {cv} - {reference}{tuned} "
            "tuned "
            f"trial(s) (~{self.trial_s:.0f} s each, the costliest configuration ~{self.trial_max_s:.0f} s"
            f"{epochs}) - then {refit}; about {self.planned_s:.0f} s planned, no trial starts after "
            f"{self.deadline_s:.0f} s"
        )


def plan_study(
    budget_s: float,
    *,
    spent_s: float = 0.0,
    reference_epoch_s: float | None,
    reference_epochs: int,
    trial_epoch_s: float,
    trial_epochs: int,
    fold_options: tuple[int, ...],
    max_trials: int,
    refit: bool,
    trial_epoch_max_s: float | None = None,
    min_tuned: int = 2,
    min_epochs: int = 5,
    fit_overhead_s: float = 0.0,
) -> StudyPlan:
    """The most folds (of ``fold_options``, most first) that leave room for the reference trial and at
    least ``min_tuned`` tuned trials; without folds, fewer epochs per tuned trial (not below
    ``min_epochs``) when even that does not fit; then as many trials as fit (at most ``max_trials``);
    the refit is kept when it fits after them.

    ``spent_s``: seconds already used (the speed probes); ``fit_overhead_s``: what every fit costs besides
    its epochs. ``reference_epoch_s`` None: no reference trial is to run. Raises ``ConfigError`` when not
    even the reference trial (or one trial) fits, naming the budget it needs.
    """
    usable = budget_s * (1.0 - OVERHEAD_SHARE) - spent_s
    worst_s = max(trial_epoch_max_s or trial_epoch_s, trial_epoch_s)

    def cost(epochs: int, epoch_s: float | None, folds: int) -> float:
        return 0.0 if epoch_s is None else trial_seconds(epochs, epoch_s, folds, fit_overhead_s)

    folds, epochs = fold_options[-1], trial_epochs
    for option in fold_options:
        if usable - cost(reference_epochs, reference_epoch_s, option) >= min_tuned * cost(
            trial_epochs, trial_epoch_s, option
        ):
            folds = option
            break
    ref = cost(reference_epochs, reference_epoch_s, folds)
    first = ref if reference_epoch_s is not None else cost(min_epochs, trial_epoch_s, folds)
    if first > usable:
        need = (first + spent_s) / (1.0 - OVERHEAD_SHARE)
        raise ConfigError(
            f"--budget {budget_s:.0f} s is too short: "
            + ("the reference trial alone" if reference_epoch_s is not None else "one trial")
            + f" needs about {need:.0f} s on this machine; give at least {math.ceil(need / 60)}m"
            + (" or set study.reference_trial: false" if reference_epoch_s is not None else "")
        )
    while epochs > min_epochs and usable - ref < min_tuned * cost(epochs, trial_epoch_s, folds):
        epochs -= 1
    one = cost(epochs, trial_epoch_s, folds)
    n_tuned = int((usable - ref) // one) if one > 0 else max_trials
    with_ref = 1 if reference_epoch_s is not None else 0
    n_trials = max(1, min(max_trials, with_ref + n_tuned))
    capped = max_trials if with_ref + n_tuned > max_trials else None
    planned = ref + (n_trials - with_ref) * one
    refit_s = fit_seconds(epochs, max(trial_epoch_s, reference_epoch_s or 0.0), 1.1, fit_overhead_s)
    keep_refit = refit and planned + refit_s <= usable
    if refit and not keep_refit and n_trials - with_ref > min_tuned:  # the refit takes one trial's place
        n_trials -= 1
        planned -= one
        keep_refit = planned + refit_s <= usable
    deadline = max(usable - (refit_s if keep_refit else 0.0) - one, 0.0)
    return StudyPlan(
        budget_s=budget_s,
        folds=folds,
        n_trials=n_trials,
        refit=keep_refit,
        reference_s=ref,
        trial_s=one,
        trial_max_s=cost(epochs, worst_s, folds),
        refit_s=refit_s,
        deadline_s=deadline,
        epochs=epochs if epochs < trial_epochs else None,
        capped=capped,
    )


#: Targets of search-space parameters that change what one epoch costs (probed for the plan).
COST_TARGETS = ("model.name", "model.filters", "model.params", "data", "data.size", "data.crop", "train.batch_size")


#: Most configurations a plan probes (the product of the cost-bearing choices is cut here).
MAX_PROBES = 8


def cost_probes(tune: TuneConfig) -> list[dict[str, Any]]:
    """Parameter sets that span a tuned trial's cost: the product of the choices of the categorical
    parameters that set the backbone, its widths or the resolution (a choice whose condition does not
    hold is left out), at most :data:`MAX_PROBES`."""
    import itertools

    from experiments.settings.search_space import is_active

    costly = [
        p
        for p in tune.space.params
        if p.kind == "categorical"
        and p.target is not None
        and any(p.target == t or p.target.startswith(t + ".") for t in COST_TARGETS)
    ]
    probes: list[dict[str, Any]] = []
    for combo in itertools.product(*[p.labels for p in costly]):
        chosen: dict[str, Any] = {}
        for p, label in zip(costly, combo):
            if is_active(p, chosen):
                chosen[p.name] = label
        if chosen not in probes:
            probes.append(chosen)
    return probes[:MAX_PROBES] or [{}]


def plan_for_study(
    tune: TuneConfig,
    *,
    data_path: str | None,
    budget_s: float,
    max_trials: int,
    with_reference: bool,
    overrides: tuple[str, ...] = (),
    ws: Workspace | None = None,
) -> StudyPlan:
    """Measure this machine's speed for the reference recipe and the search space's costliest trial
    configurations, then :func:`plan_study`."""
    from experiments.settings.trial import reference_run_config, resolve_run_config
    from experiments.tracking.lookups import training_lookups
    from experiments.training import load_training_data

    started = time.perf_counter()
    loaded: dict[Any, Any] = {}
    lookups = training_lookups(ws) if ws is not None else None

    overheads: list[float] = []

    def speed(cfg: RunConfig) -> float:
        key = (replace(cfg.data, crop=0), data_path)
        if key not in loaded:
            loaded[key] = load_training_data(cfg.data, data_path)
        epoch_s, overhead = measure_epoch_seconds(cfg, loaded[key], lookups)
        overheads.append(overhead)
        return epoch_s

    reference_epoch_s = reference_epochs = None
    if with_reference:
        ref_cfg, _ = reference_run_config(tune, extra_overrides=overrides)
        reference_epoch_s, reference_epochs = speed(ref_cfg), ref_cfg.train.epochs
    speeds: dict[str, float] = {}
    trial_epochs, n_val = 1, 0
    for params in cost_probes(tune):
        cfg, _ = resolve_run_config(tune, params, extra_overrides=overrides)
        fingerprint = repr((cfg.model, cfg.data.size, cfg.data.crop, cfg.train.batch_size))
        trial_epochs = max(trial_epochs, cfg.train.epochs)
        if fingerprint not in speeds:
            speeds[fingerprint] = speed(cfg)
        n_val = len(next(iter(loaded.values())).val)
    epoch_s = [speeds[k] for k in speeds]
    if any(p.target == "augment.targets" for p in tune.space.params):  # a warm-up fit before targeted trials
        trial_epochs += int((tune.run.get("augment") or {}).get("auto_warmup_epochs", 0) or 0)
    folds = tune.study.folds_for(n_val)
    options = tuple(dict.fromkeys([folds, 2, 0])) if folds else (0,)
    return plan_study(
        budget_s,
        spent_s=time.perf_counter() - started,
        reference_epoch_s=reference_epoch_s,
        reference_epochs=reference_epochs or 0,
        trial_epoch_s=float(np.mean(epoch_s)),
        trial_epoch_max_s=max(epoch_s),
        trial_epochs=trial_epochs,
        fold_options=options,
        max_trials=max_trials,
        refit=tune.study.refit,
        fit_overhead_s=max(overheads),
    )


def plan_ensemble(cfg: EnsembleConfig, best_fit_s: float | None, budget_s: float) -> tuple[Any, str]:
    """``(config, what was planned)`` for ``galaxy10 ensemble --budget``: cross-fitting retrains the best
    trial's recipe ``crossfit.folds`` times on (K-1)/K of the training images (its one whole-train fit
    took ``best_fit_s``); when that does not fit in the budget (less the overhead share and a quarter for
    embeddings and second stages) the comparison runs in ``val_cv`` mode, which trains no CNN."""
    if cfg.mode != "crossfit":
        return cfg, f"budget {budget_s:.0f} s: mode {cfg.mode} trains no CNN"
    if best_fit_s is None:
        return replace(cfg, mode="val_cv"), (
            f"budget {budget_s:.0f} s: the best trial's fit time is not recorded, "
            "so cross-fitting cannot be planned; mode val_cv (no CNN trained)"
        )
    k = cfg.crossfit.folds
    crossfit_s = k * best_fit_s * (k - 1) / k
    room = budget_s * (1.0 - OVERHEAD_SHARE) * 0.75
    if crossfit_s <= room:
        return cfg, f"budget {budget_s:.0f} s: cross-fitting {k} fold CNNs (~{crossfit_s:.0f} s) fits"
    return replace(cfg, mode="val_cv"), (
        f"budget {budget_s:.0f} s: cross-fitting {k} fold CNNs would take "
        f"~{crossfit_s:.0f} s; mode val_cv instead (second stages on the "
        "validation embeddings, scored by cross-validation; no CNN trained)"
    )
