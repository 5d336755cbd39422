"""The resolvers conf/train.yaml uses. Importing this module registers them: train.py does before Hydra
starts, and so does every process that runs sweep jobs (through trainlab.sweeps.summary)."""

from __future__ import annotations

import time
from datetime import datetime

from omegaconf import OmegaConf

MAX_NAME = 150  # characters of a job's folder name; file systems allow 255

_start_time = time.time()  # when this run started; under torchrun, rank 0's (see distributed.setup)


def set_start_time(seconds: float) -> None:
    global _start_time
    _start_time = seconds


def start_time(fmt: str) -> str:
    """``${trainlab.start_time:%H-%M-%S}``: like Hydra's ``${now:...}``, but one instant that torchrun's
    ranks can agree on, so that they all resolve the same run dir."""
    return datetime.fromtimestamp(_start_time).strftime(fmt)


def run_name(overrides: str) -> str:
    """A job's folder name from its overrides (Hydra's ``override_dirname``), which is also its run's name in
    TensorBoard: ``/`` in values (``trainer.monitor=val/acc``) would make sub-folders, and long override lists
    would exceed the file system's limit."""
    name = overrides.replace("/", "_")
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 3] + "..."


def unnamed_settings() -> list[str]:
    """``${trainlab.unnamed_settings:}``: the settings that do not name a sweep's run dirs (Hydra's
    ``override_dirname.exclude_keys``): the run-only ones and paths of ``trainlab.settings``."""
    from trainlab import settings

    return list(settings.NOT_HPARAMS)


OmegaConf.register_new_resolver("trainlab.start_time", start_time, replace=True)
OmegaConf.register_new_resolver("trainlab.run_name", run_name, replace=True)
OmegaConf.register_new_resolver("trainlab.unnamed_settings", unnamed_settings, replace=True)
