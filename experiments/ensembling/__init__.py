"""``galaxy10 ensemble``: candidates built from a study's models, compared on validation, a champion.

Modules: ``members`` (the study's top-k trials with logged models and their data), ``context`` (the
candidate, the build context and what the builders share), ``fold_cnns`` (the best trial's recipe
cross-fitted on K folds), ``second_stage_tuning`` (optional Optuna tuning of second stages),
``families`` (the reference, votes, backbones, cross-fitted and validation-CV stacks, prior twins),
``candidates`` (:func:`build_candidates`, which runs them), ``champion`` (the rule that keeps the best
CNN unless a candidate wins beyond its standard error) and ``comparison`` (the logged comparison run,
its table and the registered winner). The estimators live in ``ensembles/``.
"""
