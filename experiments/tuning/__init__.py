"""Optuna studies: the only package besides ``experiments.tracking`` that imports :mod:`optuna`.

Modules: ``search_space`` (the space as YAML data; ``suggest`` is the one caller of
``trial.suggest_*``; the rest of a tuning YAML is ``experiments.settings.tune``),
``pruning`` (equal-epoch steps and the pruning floor), ``budget`` (``--budget`` plans), ``storage``
(SQLite/PostgreSQL storages), ``samplers`` (samplers and pruners from config), ``study`` (opening and
reading studies), ``objective`` (one worker's trials),
``workers`` (spawned worker processes), ``run`` (the coordinator behind ``galaxy10 tune``),
``refit`` (the chosen configuration on train + validation) and ``plots``.
"""

#: Where studies live unless a config or ``--storage`` says otherwise (here, so building the CLI's parser
#: imports nothing heavy).
DEFAULT_STORAGE = "sqlite:///optuna.db"
