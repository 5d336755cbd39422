"""Callbacks: small objects the trainer calls at fixed points of a fit, with an explicit context.

A callback sees the run through ``FitContext`` (the model, the data, the monitor, the loggers and the
loop's counters) and the test split through its batches and ``TestOutputs`` (outputs and targets gathered
from every rank, and the test metrics); it never reads the trainer's attributes. Its ``state_dict`` travels
in checkpoints, so a resumed run continues it.

Callbacks run on every rank of a DDP run, as Lightning's do, since some take part in collectives (the
pictures gather every rank's worst test images); what they log goes through ``FitContext.logger``, which
records on rank 0 only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainlab.devices import Autocast
from trainlab.errors import ConfigError
from trainlab.monitor import Monitor

if TYPE_CHECKING:
    from trainlab.dataloader import BatchedData
    from trainlab.loggers import Loggers
    from trainlab.state import LoopState

log = logging.getLogger(__name__)


@dataclass
class FitContext:
    """What callbacks may use of a running fit.

    Attributes:
        model: the model being trained (on ``data``'s device; not DDP-wrapped).
        data: the data set (its ``task``, ``class_names``, ``train_batches``, ``untransform``...).
        monitor: the monitored metric and its mode.
        logger: the run's loggers as one (``trainlab.loggers.Loggers``: ``log_image``, ``log_text``...); on
            ranks other than 0 it records nothing.
        run_dir: the run's folder.
        autocast: a factory of the context forward passes run in (mixed precision).
        loop: the loop's counters (``epoch``, ``global_step``, ``best_score``...); read them, don't set them.
    """

    model: nn.Module
    data: BatchedData
    monitor: Monitor
    logger: Loggers
    run_dir: Path
    autocast: Autocast
    loop: LoopState
    stop_requested: bool = False

    def request_stop(self) -> None:
        """End the fit after this epoch (its checkpoint is still written, then the test runs)."""
        self.stop_requested = True


@dataclass
class TestOutputs:
    """The model's outputs (float) and the targets on the whole test split with the best weights, gathered
    from every rank, on the CPU, and the test metrics (``test/acc``...)."""

    outputs: torch.Tensor
    targets: torch.Tensor
    metrics: dict[str, float]


class Callback:
    """Override the hooks a callback needs; the others do nothing."""

    def on_fit_start(self, context: FitContext) -> None:
        """Called once the model, data and loggers are ready, before the first epoch."""

    def on_train_batch_end(self, context: FitContext, loss: torch.Tensor) -> None:
        """Called after every training batch (its forward and backward, and the optimizer step where one was
        due) with the batch's loss, still on the device: reading its value waits for the device. The trainer
        calls it only for callbacks that override it, so the others cost a step nothing."""

    def on_epoch_end(self, context: FitContext, metrics: dict[str, float]) -> None:
        """Called after validation, before the epoch's checkpoint (which saves ``state_dict``), so that a
        resumed run continues exactly; ``metrics`` holds the epoch's values by tag."""

    def on_test_batch_end(
        self, context: FitContext, inputs: torch.Tensor, targets: torch.Tensor, outputs: torch.Tensor
    ) -> None:
        """Called on every rank for each of its test batches (model inputs, targets, float outputs)."""

    def on_test_end(self, context: FitContext, test: TestOutputs) -> None:
        """Called on every rank after the test split was evaluated with the best weights."""

    def on_fit_end(self, context: FitContext, results: dict[str, Any]) -> None:
        """Called once the run has finished and written ``metrics.json`` (``results``)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved by more than ``min_delta`` for ``patience`` epochs.
    ``patience: null`` turns it off."""

    def __init__(self, patience: int | None, min_delta: float):
        if patience is not None and patience < 1:
            raise ConfigError(f"callbacks.early_stopping.patience must be >= 1 or null, got {patience}")
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, context: FitContext, metrics: dict[str, float]) -> None:
        if self.patience is None:
            return
        monitor = context.monitor
        value = monitor.value(metrics)
        if monitor.is_improvement(value, self.best, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            log.info(
                "early stopping: %s has not improved by more than %g for %d epochs (best %.4f)",
                monitor.name,
                self.min_delta,
                self.patience,
                self.best,
            )
            context.request_stop()

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = state["best"], state["wait"]
