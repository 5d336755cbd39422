"""Learning-rate schedules that torch does not ship. torch's own are used straight from YAML."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosine(LRScheduler):
    """Linear warm-up from ``warmup_start_factor * lr`` to ``lr`` over ``warmup_fraction`` of the run,
    then cosine decay to ``min_lr_factor * lr``. Steps once per optimizer step; ``total_steps`` is filled
    in by the trainer (the number of optimizer steps in the run)."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_fraction: float,
        warmup_start_factor: float,
        min_lr_factor: float,
        last_epoch: int = -1,
    ):
        self.total_steps = max(total_steps, 1)
        self.warmup_steps = round(warmup_fraction * self.total_steps)
        self.warmup_start_factor = warmup_start_factor
        self.min_lr_factor = min_lr_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start_factor + (1 - self.warmup_start_factor) * step / self.warmup_steps
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return self.min_lr_factor + (1 - self.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]
