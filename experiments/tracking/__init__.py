"""MLflow at the edge: the only package in the codebase that imports :mod:`mlflow`.

Training receives a :class:`~experiments.tracking.base.Tracker` and never sees MLflow; ``base`` is
mlflow-free. Modules: ``base`` (protocol, :class:`NullTracker`, run provenance), ``store`` (the
tracking URI and client), ``mlflow_tracker`` (:class:`MlflowTracker`: one run, models logged with
the ``mlflow.keras`` flavour), ``runs`` (reading and updating existing runs), ``loading`` (logged
models back for prediction), ``model_registry`` (aliases and champions), ``pyfunc`` (the ensemble
as an MLflow pyfunc model) and ``faults`` (an unreachable server as one line).
"""
