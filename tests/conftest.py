"""Shared fixtures: configs composed with hydra.compose (as train.py composes them), shrunk for speed, and a
helper that runs the real command-line entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from trainlab.run import train

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"


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
