"""The resolvers conf/train.yaml uses. Importing this module registers them: train.py does before Hydra
starts, and so does every process that runs sweep jobs (through trainlab.sweeps.summary)."""

from __future__ import annotations

import os
import time
from datetime import datetime

from omegaconf import DictConfig, OmegaConf

MAX_NAME = 150  # characters of a job's folder name; file systems allow 255

_start_time = time.time()  # when this run started; under torchrun, rank 0's (see distributed.setup)


def set_start_time(seconds: float) -> None:
    global _start_time
    _start_time = seconds


def start_time(fmt: str) -> str:
    """``${trainlab.start_time:%H-%M-%S}``: like Hydra's ``${now:...}``, but one instant that torchrun's
    ranks can agree on, so that they all resolve the same run dir."""
    return datetime.fromtimestamp(_start_time).strftime(fmt)


# Where a scheduler names the job that each of its attempts belongs to: a requeued SLURM job keeps its
# SLURM_JOB_ID, a group that torchrun restarts keeps its rendezvous id (``--rdzv_id``; "none" is torchrun's
# default, which names no job).
SCHEDULER_JOB_IDS = ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID")


def scheduler_job_id(ckpt_path: str | None) -> str | None:
    """``${trainlab.scheduler_job_id:${ckpt_path}}``, the default ``run_id``: for ``ckpt_path=auto``, the id of
    the scheduler's job (``SCHEDULER_JOB_IDS``), so that the same command, requeued or restarted, names the
    same run; None otherwise, or outside a scheduler."""
    if ckpt_path != "auto":
        return None
    found = (os.environ.get(name) for name in SCHEDULER_JOB_IDS)
    return next((value for value in found if value and value != "none"), None)


def run_dir(run_id: str | None, runs: str, timestamped: str) -> str:
    """``${trainlab.run_dir:${run_id},<runs folder>,<timestamped dir>}``: Hydra's run dir, ``<runs>/<run_id>``
    for a named run (which a command run again finds again), else the folder named by the start time."""
    return f"{runs}/{run_id}" if run_id not in (None, "") else timestamped


def run_name(overrides: str) -> str:
    """A job's folder name from its overrides (Hydra's ``override_dirname``), which is also its run's name in
    TensorBoard: ``/`` in values (``trainer.monitor=val/acc``) would make sub-folders, and long override lists
    would exceed the file system's limit."""
    name = overrides.replace("/", "_")
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 3] + "..."


def unnamed_settings(*, _root_: DictConfig) -> list[str]:
    """``${trainlab.unnamed_settings:}``: the settings that do not name a sweep's run dirs (Hydra's
    ``override_dirname.exclude_keys``): the run-only ones and paths of ``trainlab.settings``, and the keys of
    the job's overrides inside one of their nodes (``logger.mlflow.tracking_uri``), since Hydra leaves out
    only the keys it is given, exactly."""
    from trainlab import settings

    given = [o.split("=", 1)[0].lstrip("+~") for o in OmegaConf.select(_root_, "hydra.overrides.task", default=[])]
    inside = [key for key in given if settings.among(key, settings.NOT_HPARAMS)]
    return list(dict.fromkeys([*settings.NOT_HPARAMS, *inside]))


OmegaConf.register_new_resolver("trainlab.start_time", start_time, replace=True)
OmegaConf.register_new_resolver("trainlab.run_name", run_name, replace=True)
OmegaConf.register_new_resolver("trainlab.scheduler_job_id", scheduler_job_id, replace=True)
OmegaConf.register_new_resolver("trainlab.run_dir", run_dir, replace=True)
OmegaConf.register_new_resolver("trainlab.unnamed_settings", unnamed_settings, replace=True)
