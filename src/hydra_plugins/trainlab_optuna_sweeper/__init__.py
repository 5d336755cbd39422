"""trainlab's Optuna sweeper. Hydra finds it because it lives in the ``hydra_plugins`` namespace package."""
