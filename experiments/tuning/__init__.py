"""Optuna studies: the only package besides ``experiments.tracking`` that imports :mod:`optuna`.

Modules: ``search_space`` (the space as YAML data; ``suggest`` is the one caller of
``trial.suggest_*``), ``storage`` (SQLite/PostgreSQL storages), ``samplers`` (samplers and pruners
from config), ``study`` (opening and reading studies), ``objective`` (one worker's trials),
``workers`` (spawned worker processes), ``run`` (the coordinator behind ``galaxy10 tune``),
``refit`` (the chosen configuration on train + validation) and ``plots``.
"""
