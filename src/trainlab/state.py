"""What a checkpoint saves and a resume restores: the loop's counters and best epoch, and the state of
every stateful part of a run (model, optimizer, scheduler, gradient scaler, callbacks, the epoch's training
metrics so far, every random number generator). A run resumed from it continues bitwise as the
uninterrupted run would have, even from the middle of an epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainlab import checkpoint
from trainlab.callbacks import Callback
from trainlab.tasks import DeferredMetrics


@dataclass
class LoopState:
    """Where the loop is."""

    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches done in the current epoch (a mid-epoch checkpoint)
    global_step: int = 0  # optimizer steps
    best_score: float | None = None
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)  # the validation metrics of the best epoch


@dataclass
class TrainingState:
    """The parts of a run that a checkpoint holds, and the run's description that goes with them."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scheduler_interval: str  # epoch or step: when the scheduler steps
    scaler: torch.amp.GradScaler
    callbacks: dict[str, Callback]
    input_spec: dict[str, Any]  # plain data: all that inference needs (``trainlab.dataloader.InputSpec``)
    config_yaml: str  # the resolved run config
    monitor: str
    loop: LoopState = field(default_factory=LoopState)
    train_metrics: DeferredMetrics | None = None  # the current epoch's
    resumed_train_metrics: dict | None = None  # those of the batches before a mid-epoch resume

    def state_dict(self) -> dict[str, Any]:
        loop = self.loop
        mid_epoch = self.train_metrics is not None and loop.batch_in_epoch
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": loop.epoch,
            "batch_in_epoch": loop.batch_in_epoch,
            "global_step": loop.global_step,
            "best_score": loop.best_score,
            "best_epoch": loop.best_epoch,
            "best_metrics": loop.best_metrics,
            "train_metrics": self.train_metrics.state_dict() if mid_epoch else self.resumed_train_metrics,
            "monitor": self.monitor,
            "callbacks": {name: callback.state_dict() for name, callback in self.callbacks.items()},
            "input_spec": self.input_spec,
            "rng": checkpoint.rng_states(),
            "config": self.config_yaml,
        }

    def load_state_dict(self, state: dict[str, Any], path: str) -> None:
        """Continue from a checkpoint ``state`` read from ``path``."""
        checkpoint.load_weights(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loop = LoopState(
            epoch=state["epoch"],
            batch_in_epoch=state["batch_in_epoch"],
            global_step=state["global_step"],
            best_score=state["best_score"],
            best_epoch=state["best_epoch"],
            best_metrics=state["best_metrics"],
        )
        self.resumed_train_metrics = state["train_metrics"]
        for name, callback in self.callbacks.items():
            if name in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][name])
        checkpoint.set_rng_states(state["rng"])

    def epoch_train_metrics(self, metrics: DeferredMetrics) -> DeferredMetrics:
        """``metrics`` become the current epoch's; after a mid-epoch resume they start from the saved ones."""
        if self.resumed_train_metrics:
            metrics.load_state_dict(self.resumed_train_metrics)
            self.resumed_train_metrics = None
        self.train_metrics = metrics
        return metrics
