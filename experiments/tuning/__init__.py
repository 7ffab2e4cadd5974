"""Optuna studies: the only package besides ``experiments.tracking`` that imports :mod:`optuna`.

Modules: ``search_space`` (the space as YAML data; ``suggest`` is the one caller of
``trial.suggest_*``; the rest of a tuning YAML is ``experiments.settings.tune``),
``pruning`` (equal-epoch steps and the pruning floor), ``budget`` (``--budget`` plans), ``storage``
(SQLite/PostgreSQL storages), ``samplers`` (samplers and pruners from config), ``study`` (opening and
reading studies), ``objective`` (one worker's trials),
``workers`` (spawned worker processes), ``run`` (the coordinator behind ``galaxy10 tune``),
``refit`` (the chosen configuration on train + validation) and ``plots``.
"""

from core.paths import DEFAULT_STORAGE  # noqa: F401  (re-exported: the tuning layer's default store)
