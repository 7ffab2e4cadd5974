"""The old name of :mod:`ensembles.ensemble_model`, kept only for ensembles already in users' MLflow stores.

Every pyfunc ensemble carries its own model code (``galaxy10_ensemble_model.py``, written by
``experiments.tracking.pyfunc``); the code of ensembles logged before the rename imports
``load_ensemble`` from here. New code imports :mod:`ensembles.ensemble_model`.
"""

from __future__ import annotations

from ensembles.ensemble_model import load_ensemble

__all__ = ["load_ensemble"]
