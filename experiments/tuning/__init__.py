"""Optuna studies: the only unit of ``experiments`` that imports :mod:`optuna`.

Modules: ``pruning`` (equal-epoch steps and the pruning floor), ``budget`` (``--budget`` plans), ``storage``
(SQLite/PostgreSQL storages), ``samplers`` (samplers and pruners from config), ``study`` (opening and reading
studies), ``objective`` (one worker's trials; ``suggest`` of ``experiments.settings.search_space`` is the one
caller of ``trial.suggest_*``), ``workers`` (spawned worker processes), ``run`` (the coordinator behind
``galaxy10 tune``), ``refit`` (the chosen configuration on train + validation), ``unlabeled`` (``tune
--unlabeled``) and ``plots``. The tuning YAML and its search space are parsed in ``experiments.settings``.
"""
