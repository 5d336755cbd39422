"""Shared fixtures: configs composed with hydra.compose (as train.py composes them), shrunk for speed, and a
helper that runs the real command-line entry points."""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from trainlab.run import train

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

# The tests' models are tiny: on a few shared cores one thread is many times faster than several waiting on
# each other. Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def make_config(*overrides: str, config_name: str = "train") -> DictConfig:
    """The config train.py would see for ``overrides``, with the progress bar off."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        extra = ["trainer.progress=false"] if config_name == "train" else []
        return compose(config_name, overrides=[*extra, *overrides])


@pytest.fixture
def train_run(tmp_path):
    """``train_run(*overrides) -> (run_dir, metrics)``: a training run in a fresh folder under tmp_path."""
    counter = iter(range(1000))

    def run(*overrides: str) -> tuple[Path, dict]:
        run_dir = tmp_path / f"run{next(counter)}"
        metrics = train(make_config(*overrides), run_dir)
        return run_dir, metrics

    return run


def cli(script: str, *args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python <script> <args>`` as a user would, returning the completed process."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_main(script: str, *args: str) -> tuple[int, str]:
    """Run ``python <script> <args>`` through its real Hydra entry point, but in this process (no second
    import of torch): returns the exit code and what the command wrote to stderr."""
    argv, stderr = sys.argv, io.StringIO()
    sys.argv = [str(ROOT / script), *args]
    try:
        with contextlib.redirect_stderr(stderr):
            runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    return code, stderr.getvalue()
