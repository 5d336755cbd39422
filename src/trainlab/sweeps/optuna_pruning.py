"""Pruning for Optuna searches (``hparams_search=optuna``): after every epoch, report the monitored metric to
the job's trial, and stop the run if the pruner judges it clearly worse than the other trials."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna

from trainlab.callbacks import Callback

if TYPE_CHECKING:
    from trainlab.callbacks import FitContext


class OptunaPruning(Callback):
    """Reports to trial number ``trial`` of the study ``study_name`` in ``storage``, and raises
    ``optuna.TrialPruned`` when ``pruner`` says so (the sweeper then records the trial as pruned).

    The trial is looked up in the storage by its number rather than handed over as an object, so this works
    in whatever process or machine the launcher runs the job on. ``trial: null`` (not a search) does nothing.
    """

    def __init__(self, storage: str, study_name: str, trial: int | None, pruner: optuna.pruners.BasePruner):
        self.storage, self.study_name, self.trial_number, self.pruner = storage, study_name, trial, pruner
        self._trial: optuna.Trial | None = None

    def on_epoch_end(self, context: FitContext, metrics: dict[str, float]) -> None:
        if self.trial_number is None:
            return
        trial = self._connect()
        monitor, epoch = context.monitor, context.loop.epoch
        value = monitor.value(metrics)
        trial.report(value, step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(
                f"trial {self.trial_number} pruned after epoch {epoch}: {monitor.name}={value:.4g}"
            )

    def _connect(self) -> optuna.Trial:
        if self._trial is None:
            storage = optuna.storages.get_storage(self.storage)
            study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=self.pruner)
            study_id = storage.get_study_id_from_name(self.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)
            self._trial = optuna.Trial(study, trial_id)
        return self._trial
