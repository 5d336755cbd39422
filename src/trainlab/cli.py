"""What the entry points share: printing the config, and turning user errors into one clear line."""

from __future__ import annotations

import gc
import logging
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from trainlab.errors import TrainlabError
from trainlab.preemption import Interrupted, stop_for_late_signal

log = logging.getLogger("trainlab")

# Errors whose message is the whole story: shown as one line, without a traceback. Anything else is a bug
# and keeps its traceback.
USER_ERRORS = (TrainlabError, MissingMandatoryValue)


def print_config(cfg: DictConfig) -> None:
    from trainlab import distributed

    if not distributed.is_main():
        return
    from rich.console import Console
    from rich.syntax import Syntax

    Console(stderr=True).print(Syntax(OmegaConf.to_yaml(cfg, resolve=True), "yaml", background_color="default"))


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resume_command(ckpt_path) -> str:
    """The command line that continues this run from ``ckpt_path``: the checkpoint holds its config. A run
    started with ``ckpt_path=auto`` continues itself, in its own run dir: its command, as it was."""
    script, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    return shlex.join(["python", script, *(args if "ckpt_path=auto" in args else [f"ckpt_path={ckpt_path}"])])


def run_job(job: Callable[[], Any], show_traceback: bool = False) -> Any:
    """Run ``job``; a user error becomes ``error: <message>`` and exit code 1 (a signal: 128 + signum).

    In a multirun a user error is re-raised instead, so that Hydra records the job as failed and the sweep
    goes on; a signal stops the sweep too. ``show_traceback`` (or HYDRA_FULL_ERROR=1) keeps the traceback.
    """
    try:
        stop_for_late_signal()  # a sweep's job: Ctrl-C came as the previous one was finishing
        return job()
    except Interrupted as interrupted:
        resume = f". Resume with: {resume_command(interrupted.ckpt_path)}" if interrupted.ckpt_path else ""
        log.error("%s%s", interrupted, resume)
        sys.exit(interrupted.exit_code)
    except Exception as error:
        cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        if _multirun() or show_traceback or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if not isinstance(cause, USER_ERRORS):
            raise
        print(f"error: {str(cause).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(1)


def leave_objects_to_the_os() -> None:
    """Called by an entry point once its work is done and its files are closed. Python's exit would walk the
    half a million objects that importing torch, torchmetrics and Hydra leaves, in garbage-collection passes
    (about a second on a CPU core, as long as a small model's epoch); frozen (``gc.freeze``), they are not
    walked, and the memory goes back with the process. Never between the jobs of one process (a sweep):
    cyclic garbage frozen there would stay."""
    gc.freeze()
