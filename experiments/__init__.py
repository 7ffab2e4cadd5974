"""Everything that touches Optuna and MLflow: configs, CLI, training runs, studies, reports, serving."""
