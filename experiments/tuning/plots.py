"""The study's Optuna plots, saved as MLflow artifacts of the parent run."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState
from optuna.visualization import matplotlib as ovm

from core.errors import first_line
from experiments.tuning.storage import quiet_optuna_warnings


def save_plots(study: optuna.Study, parent: Any, metric: str) -> tuple[list[str], list[str]]:
    """Log optimisation history, parameter importances and parallel coordinates PNGs on the parent run.

    Returns (artifact names logged, notes on plots that could not be made and why).
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: the CLI never opens a window
    import matplotlib.pyplot as plt

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    target_name = f"val {metric}"
    multi = len(study.directions) > 1  # a speed objective: the plots follow the metric, plus the Pareto front
    target = (lambda t: t.values[0]) if multi else None
    logged, notes = [], []
    if not complete:
        return [], ["no COMPLETE trial yet: no optimisation plots"]

    def importances() -> Any:
        if len(complete) < 2:
            raise ValueError(f"parameter importances need >= 2 COMPLETE trials, the study has {len(complete)}")
        shared = set.intersection(*(set(t.params) for t in complete))
        varying = sorted(n for n in shared if len({repr(t.params[n]) for t in complete}) > 1)
        if not varying:
            raise ValueError(
                "parameter importances need a parameter that varies across the COMPLETE trials "
                "(and is set in all of them); none does yet"
            )
        return ovm.plot_param_importances(study, params=varying, target=target, target_name=target_name)

    makers: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target=target, target_name=target_name),
        "param_importances": importances,
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target=target, target_name=target_name),
    }
    if multi:
        makers["pareto_front"] = lambda: ovm.plot_pareto_front(study, target_names=[target_name, "images/s"])
    for name, make in makers.items():
        try:
            with quiet_optuna_warnings(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                ax = make()
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as err:
            notes.append(f"plot {name} skipped: {first_line(err)}")
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
        fig.tight_layout()
        parent.log_figure(fig, f"plots/{name}.png")
        plt.close(fig)
        logged.append(f"plots/{name}.png")
    return logged, notes
