"""The divergence check: a training loss that became NaN or infinite stops the run with one line, before it
could replace a good checkpoint with a diverged one."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from trainlab.errors import TrainingError
from trainlab.state import LoopState


def check_finite(loss: torch.Tensor | float, loop: LoopState, last_checkpoint: Path) -> float:
    """``loss`` as a float (reading a tensor waits for the device), or a ``TrainingError`` if it is not
    finite, naming the epoch and step and saying whether ``last_checkpoint`` holds a good state."""
    value = float(loss)
    if not math.isfinite(value):
        kept = (
            f"the last good checkpoint {last_checkpoint} is kept"
            if last_checkpoint.is_file()
            else "no checkpoint was written"
        )
        raise TrainingError(
            f"the training loss became {value} at epoch {loop.epoch + 1}, step {loop.global_step}; {kept}. "
            "Lower optimizer.lr, or set trainer.grad_clip"
        )
    return value
