"""A Hydra callback for tests/test_ddp.py: one rank of a torchrun group's first attempt dies after a given
optimizer step, abruptly (``os._exit``: no checkpoint, no clean-up), as when its machine fails. torchrun then
restarts the group (``--max-restarts``), whose attempts it counts in ``TORCHELASTIC_RESTART_COUNT``.

A Hydra callback (``+hydra.callbacks.exit_once._target_=exit_once.ExitOnce``) rather than a trainlab callback:
the ``hydra`` node is not part of the run's config, so it is not saved in the checkpoints that the restarted
group resumes from (which build trainlab's own classes only)."""

from __future__ import annotations

import os
from typing import Any

import torch
from hydra.experimental.callback import Callback
from torch.optim.optimizer import register_optimizer_step_post_hook


class ExitOnce(Callback):
    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if int(os.environ["RANK"]) != self.rank or os.environ["TORCHELASTIC_RESTART_COUNT"] != "0":
            return
        steps = 0

        def after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            nonlocal steps
            steps += 1
            if steps == self.step:
                os._exit(1)

        register_optimizer_step_post_hook(after_step)  # every optimizer's steps, after each
