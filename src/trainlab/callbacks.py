"""Callbacks: small objects the trainer calls at the end of every validated epoch. They read the single
monitor setting from the trainer, and their state travels in checkpoints so a resumed run continues them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trainlab.errors import ConfigError

if TYPE_CHECKING:
    from trainlab.trainer import Trainer

log = logging.getLogger(__name__)


class Callback:
    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once the model, data and TensorBoard writer are ready, before the first epoch."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Called after validation, before the epoch's checkpoint (which saves ``state_dict``), so that a
        resumed run continues exactly; ``metrics`` holds the epoch's values by tag."""

    def on_test_end(self, trainer: Trainer) -> None:
        """Called after the test split was evaluated with the best weights."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved by more than ``min_delta`` for ``patience`` epochs.
    ``patience: null`` turns it off."""

    def __init__(self, patience: int | None = None, min_delta: float = 0.0):
        if patience is not None and patience < 1:
            raise ConfigError(f"callbacks.early_stopping.patience must be >= 1 or null, got {patience}")
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.patience is None:
            return
        value = metrics[trainer.monitor]
        if trainer.is_improvement(value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            log.info(
                "early stopping: %s has not improved by more than %g for %d epochs (best %.4f)",
                trainer.monitor,
                self.min_delta,
                self.patience,
                self.best,
            )
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = state["best"], state["wait"]
