"""Opening, checking and reading studies; the user attributes a study carries."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.errors import ConfigError
from experiments.settings.run import plain
from experiments.settings.search_space import space_hash
from experiments.settings.tune import ATTR_INIT_FROM, ATTR_REFERENCE, TuneConfig
from experiments.tuning.samplers import make_pruner, make_sampler
from experiments.tuning.storage import quiet_optuna_warnings, storage_url_of

log = logging.getLogger(__name__)


#: Study user attributes written by this module.
ATTR_SPACE_HASH = "search_space_hash"
ATTR_METRIC = "metric"
ATTR_DATA = "data_fingerprint"
ATTR_PARENT_RUN = "mlflow_parent_run_id"
ATTR_EXPERIMENT = "mlflow_experiment_id"
ATTR_TRACKING_URI = "mlflow_tracking_uri"
#: Trial user attribute holding the trial's MLflow child run id.
ATTR_TRIAL_RUN = "mlflow_run_id"
#: Trial attribute: the trained model's inference speed on the machine that trained it (images/s).
ATTR_SPEED = "images_per_second"
#: How a finished trial's state shows in MLflow's run status.
MLFLOW_STATUS: dict[TrialState, str] = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "KILLED",
    TrialState.FAIL: "FAILED",
}
#: Trials that count towards ``n_trials``.
COUNTED_STATES: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED)


def open_study(
    tune: TuneConfig,
    storage: optuna.storages.BaseStorage,
    *,
    create: bool = True,
    seed_offset: int = 0,
    data: tuple[str, str] | None = None,
    pretrained: str | None = None,
) -> optuna.Study:
    """Create the study or load it to continue; refuse one made with another search space, metric or data.

    ``pretrained`` (a model reference): a new study queues the first start point fine-tuned from it (trial
    attribute ``init_from``) right after the reference trial, before the start points from scratch.

    ``data`` is ``(fingerprint, file name)`` of the Galaxy10 file this process trains on: the first
    process records it on the study, and a later one (another machine, another day) with a different
    file is refused, so trials on different data never mix in one study.

    Raises
    ------
    ConfigError
        If a study of that name exists with a different search-space hash, metric or data
        fingerprint, or (with ``create=False``) does not exist.
    """
    cfg = tune.study
    sampler = make_sampler(cfg.sampler, seed_offset=seed_offset)
    pruner = make_pruner(cfg.pruner)
    exists = cfg.name in {s.study_name for s in storage.get_all_studies()}
    if not exists and not create:
        raise ConfigError(f"study {cfg.name!r} not found in {storage_url_of(storage)}; run galaxy10 tune first")
    if exists:
        study_id = storage.get_study_id_from_name(cfg.name)
        if len(storage.get_study_directions(study_id)) != len(cfg.directions):
            raise ConfigError(
                f"study {cfg.name!r} was created with {len(storage.get_study_directions(study_id))} "
                f"objective(s), this config asks for {len(cfg.directions)} (study.speed_objective); "
                "pass a new --study name or set study.speed_objective back"
            )
    with quiet_optuna_warnings():
        study = optuna.create_study(
            study_name=cfg.name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=cfg.directions,
            load_if_exists=True,
        )
    wanted = space_hash(tune.space)
    attrs = study.user_attrs
    check_study_data(study, data)
    if ATTR_SPACE_HASH not in attrs:
        study.set_user_attr(ATTR_SPACE_HASH, wanted)
        study.set_user_attr(ATTR_METRIC, cfg.metric)
        study.set_user_attr("search_space", plain(tune.space.raw))
        if cfg.reference_trial and not study.get_trials(deepcopy=False):
            study.enqueue_trial({}, user_attrs={ATTR_REFERENCE: True})  # trial 0: the shipped reference recipe
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
            if pretrained:  # first: the first start point fine-tuned from the self-supervised model
                first = dict(cfg.start_points[0]) if cfg.start_points else {}
                study.enqueue_trial(first, user_attrs={"start_point": True, ATTR_INIT_FROM: pretrained})
            for point in cfg.start_points:  # the config's first guesses, before the sampler's own
                study.enqueue_trial(dict(point), user_attrs={"start_point": True})
        return study
    if attrs[ATTR_SPACE_HASH] != wanted:
        raise ConfigError(
            f"study {cfg.name!r} in {storage_url_of(storage)} was created with a different search space "
            f"(hash {attrs[ATTR_SPACE_HASH]} vs {wanted}); pass a new --study name or restore the original search_space"
        )
    if attrs.get(ATTR_METRIC, cfg.metric) != cfg.metric:
        raise ConfigError(
            f"study {cfg.name!r} optimises {attrs[ATTR_METRIC]!r}, not {cfg.metric!r}; "
            "pass a new --study name or set study.metric back"
        )
    return study


def check_study_data(study: optuna.Study, data: tuple[str, str] | None) -> None:
    """Record ``data`` = ``(fingerprint, file name)`` on a new study; refuse other data for an existing one."""
    if data is None:
        return
    fingerprint, name = data
    recorded = study.user_attrs.get(ATTR_DATA)
    if recorded is None:
        study.set_user_attr(ATTR_DATA, {"fingerprint": fingerprint, "file": name})
        return
    if recorded.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"study {study.study_name!r} was run on {recorded.get('file')} (fingerprint "
            f"{str(recorded.get('fingerprint'))[:12]}) but this process has {name} (fingerprint {fingerprint[:12]}); "
            "use the same data file on every worker, or pass a new --study name"
        )


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose heartbeat is older than the grace period FAIL; return their numbers."""
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with quiet_optuna_warnings():
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    failed = sorted(before - after)
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in failed]
    if stale:
        log.warning(
            "study %s: marked stale trial(s) %s FAIL (their worker stopped sending heartbeats)", study.study_name, stale
        )
    return stale


def state_counts(study: optuna.Study) -> dict[str, int]:
    """``{"COMPLETE": 3, "PRUNED": 2, ...}`` for every state that occurs."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def n_counted(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: COMPLETE + PRUNED."""
    return len(study.get_trials(deepcopy=False, states=COUNTED_STATES))


def trial_accuracy(trial: FrozenTrial) -> tuple[float, int] | None:
    """``(accuracy, images behind it)`` of a COMPLETE trial: its cross-validated accuracy over the train
    split when it was cross-validated, else its validation accuracy; None when not recorded."""
    n = trial.user_attrs.get("scored_images")
    acc = trial.user_attrs.get("cv_accuracy", trial.user_attrs.get("val_accuracy"))
    if acc is None or not n:
        return None
    return float(acc), int(n)


def trial_value(trial: FrozenTrial) -> float | None:
    """A trial's value of the study's metric (its first objective; a speed objective comes second)."""
    values = trial.values
    return None if not values else float(values[0])


def maximizes(study: optuna.Study) -> bool:
    """Whether the study's metric (its first objective) is maximised."""
    return study.directions[0] == optuna.study.StudyDirection.MAXIMIZE


def is_multi_objective(study: optuna.Study) -> bool:
    """Whether the study optimises inference speed too (``study.speed_objective``)."""
    return len(study.directions) > 1


def guarded_best(trials: Sequence[FrozenTrial], metric: str, *, maximize: bool = True) -> FrozenTrial | None:
    """The best COMPLETE trial by ``metric`` among those that keep their accuracy: a trial whose
    (cross-validated) accuracy trails the most accurate trial's by more than the standard error of the
    difference is passed over (the study-level accuracy guard; with ``metric: accuracy`` it is the plain
    best). Ties go to the earlier trial. :func:`guard_evidence` says why."""
    return guard_evidence(trials, metric, maximize=maximize)[0]


def guard_evidence(
    trials: Sequence[FrozenTrial], metric: str, *, maximize: bool = True
) -> tuple[FrozenTrial | None, list[str]]:
    """:func:`guarded_best` and one line per trial it looked at, saying why it was passed over or chosen.

    The standard error is unpaired (``sqrt(a(1-a)/n + b(1-b)/m)``): a trial keeps its accuracy, not its
    per-image predictions, so the two trials' answers cannot be set side by side image by image.
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE and trial_value(t) is not None]
    if not complete:
        return None, []
    complete.sort(key=lambda t: (-trial_value(t) if maximize else trial_value(t), t.number))
    if metric == "accuracy":
        return complete[0], [f"trial {complete[0].number} has the best accuracy ({trial_value(complete[0]):.4f})"]
    scored = [(t, trial_accuracy(t)) for t in complete]
    known = [(t, a) for t, a in scored if a is not None]
    if not known:
        return complete[0], [
            f"trial {complete[0].number} has the best {metric}; no trial recorded its accuracy, "
            "so the accuracy guard could not judge"
        ]
    top, (top_acc, top_n) = max(known, key=lambda ta: (ta[1][0], -ta[0].number))
    lines = [
        f"the most accurate trial is {top.number} (accuracy {top_acc:.4f} on {top_n} images); a trial whose "
        "accuracy trails it by more than the (unpaired) standard error of the difference is passed over"
    ]
    for t, acc in scored:
        if acc is None:
            lines.append(f"trial {t.number} ({metric} {trial_value(t):.4f}) recorded no accuracy: chosen")
            return t, lines
        a, n = acc
        se = ((top_acc * (1 - top_acc)) / top_n + (a * (1 - a)) / n) ** 0.5
        verdict = "chosen" if top_acc - a <= se else "passed over"
        lines.append(
            f"trial {t.number} ({metric} {trial_value(t):.4f}): accuracy {a:.4f}, {a - top_acc:+.4f} against "
            f"trial {top.number}, standard error {se:.4f}: {verdict}"
        )
        if top_acc - a <= se:
            return t, lines
    return complete[0], lines  # unreachable: the most accurate trial always qualifies


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's best COMPLETE trial under the accuracy guard (:func:`guarded_best`), or ``None``."""
    metric = str(study.user_attrs.get(ATTR_METRIC, "accuracy"))
    return guarded_best(study.get_trials(deepcopy=False), metric, maximize=maximizes(study))


@dataclass(frozen=True)
class StudySummary:
    """One line of ``galaxy10 study list``."""

    name: str
    n_trials: int
    counts: Mapping[str, int]
    best_value: float | None
    metric: str | None
    start: str | None


def list_studies(storage: optuna.storages.BaseStorage) -> list[StudySummary]:
    """Every study in ``storage`` with its trial counts and best value."""
    out = []
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(s._study_id, deepcopy=False)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        complete = [v for v in (trial_value(t) for t in trials if t.state == TrialState.COMPLETE) if v is not None]
        best = (
            (max(complete) if s.directions[0] == optuna.study.StudyDirection.MAXIMIZE else min(complete))
            if complete
            else None
        )
        starts = [t.datetime_start for t in trials if t.datetime_start is not None]
        out.append(
            StudySummary(
                name=s.study_name,
                n_trials=len(trials),
                counts=counts,
                best_value=best,
                metric=s.user_attrs.get(ATTR_METRIC),
                start=min(starts).strftime("%Y-%m-%d %H:%M") if starts else None,
            )
        )
    return out


def load_existing_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Load study ``name`` for reading; raise ``ConfigError`` listing the known names if absent."""
    names = sorted(s.study_name for s in storage.get_all_studies())
    if name not in names:
        raise ConfigError(
            f"study {name!r} not found in {storage_url_of(storage)}; known studies: {', '.join(names) or '(none)'}"
        )
    with quiet_optuna_warnings():
        return optuna.load_study(study_name=name, storage=storage)


def count_tags(study: optuna.Study) -> dict[str, int]:
    return {f"study.n_{k.lower()}": v for k, v in state_counts(study).items()}


@dataclass(frozen=True)
class ParetoPoint:
    """One COMPLETE trial with both objectives: the study's metric and inference speed."""

    number: int
    value: float
    images_per_second: float
    run_id: str | None
    on_front: bool


def pareto_front(trials: Sequence[FrozenTrial]) -> list[ParetoPoint]:
    """Every COMPLETE trial that measured its speed, marked whether it is on the Pareto front of
    (metric, images/s): no other trial is at least as good on both and better on one. Sorted by speed."""
    points = [
        (t.number, trial_value(t), float(t.user_attrs[ATTR_SPEED]), t.user_attrs.get(ATTR_TRIAL_RUN))
        for t in trials
        if t.state == TrialState.COMPLETE and trial_value(t) is not None and t.user_attrs.get(ATTR_SPEED) is not None
    ]

    def dominated(v: float, s: float) -> bool:
        return any(v2 >= v and s2 >= s and (v2 > v or s2 > s) for _, v2, s2, _ in points)

    out = [ParetoPoint(n, v, s, r, not dominated(v, s)) for n, v, s, r in points]
    return sorted(out, key=lambda p: (-p.images_per_second, -p.value, p.number))
