"""The Hydra sweeper ``hydra/sweeper=optuna`` (conf/hydra/sweeper/optuna.yaml). Hydra imports every module under
``hydra_plugins`` whenever an app starts, so this one imports nothing heavy; the search is in
trainlab.sweeps.optuna_search."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(self, trial: int | None = None, **settings: Any):
        # trial: null here; the sweeper sets it in each job's config, for trainlab.sweeps.optuna_pruning
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from trainlab.sweeps.optuna_search import OptunaSearch

        self.search = OptunaSearch(
            **self.settings, hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        self.search.sweep(arguments)
