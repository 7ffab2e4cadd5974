"""``galaxy10 ensemble``: candidates built from a study's models, compared on validation, a champion.

Modules: ``members`` (the study's top-k trials with logged models and their data), ``candidates``
(voting, cross-fitted and validation-CV stacking candidates), ``champion`` (the rule that keeps the
best CNN unless a candidate wins beyond its standard error) and ``comparison`` (the logged
comparison run, its table and the registered winner). The estimators live in ``ensembles/``.
"""
