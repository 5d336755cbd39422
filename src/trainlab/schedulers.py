"""The schedule torch has the parts of but no name for. torch's own schedulers are used straight from YAML."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


class WarmupCosine(SequentialLR):
    """torch's ``LinearLR`` from ``warmup_start_factor * lr`` to ``lr`` over ``warmup_fraction`` of the run,
    then its ``CosineAnnealingLR`` down to ``min_lr_factor * lr``, chained by ``SequentialLR``. Steps once per
    optimizer step; ``total_steps`` is filled in by the trainer (the number of optimizer steps in the run)."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_fraction: float,
        warmup_start_factor: float,
        min_lr_factor: float,
    ):
        self.total_steps = total = max(total_steps, 1)
        warmup = round(warmup_fraction * total)
        lowest = min_lr_factor * optimizer.param_groups[0]["lr"]  # before LinearLR lowers the lr to its start
        schedules = []
        if warmup:  # none: the cosine from the first step, at the full lr
            schedules.append(
                LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup)
            )
        schedules.append(CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1), eta_min=lowest))
        super().__init__(optimizer, schedules, milestones=[warmup] if warmup else [])
