"""Configuration: one reader, one key check and one error wording (``checks.py``) for the three YAMLs.

``run.py`` holds a training run's config (``galaxy10 train``, each trial), ``tune.py`` a tuning YAML
(study settings, the search space's place in it, each trial's run config) and ``ensemble.py`` the
``galaxy10 ensemble`` settings. The shipped YAML files themselves live in ``experiments/configs/``.
"""
