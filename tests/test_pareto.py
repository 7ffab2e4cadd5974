"""The Pareto front of (validation metric, inference images/s) over a study's finished trials."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState, create_trial

from experiments.tuning.study import ATTR_SPEED, ATTR_TRIAL_RUN, pareto_front


def _trial(number: int, value: float | None, speed: float | None, state: TrialState = TrialState.COMPLETE):
    attrs = {ATTR_TRIAL_RUN: f"run{number}"} | ({ATTR_SPEED: speed} if speed is not None else {})
    trial = create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        user_attrs=attrs,
        distributions={},
        params={},
    )
    trial.number = number
    return trial


def test_front_keeps_the_trials_no_other_beats_on_both() -> None:
    trials = [
        _trial(0, 0.80, 100.0),
        _trial(1, 0.75, 400.0),
        _trial(2, 0.70, 300.0),  # 2: beaten by 1
        _trial(3, 0.85, 50.0),
        _trial(4, 0.80, 100.0),  # 4 ties 0 exactly: both stay on the front
        _trial(5, 0.90, None),
        _trial(6, None, 900.0, TrialState.PRUNED),
    ]  # no speed / not finished
    points = pareto_front(trials)
    assert [p.number for p in points] == [1, 2, 0, 4, 3]  # fastest first
    assert {p.number for p in points if p.on_front} == {0, 1, 3, 4}
    assert points[0].run_id == "run1" and points[0].images_per_second == 400.0


def test_no_speed_means_no_points() -> None:
    assert pareto_front([_trial(0, 0.5, None)]) == []
    assert optuna.__version__  # the trials above are real Optuna FrozenTrials
