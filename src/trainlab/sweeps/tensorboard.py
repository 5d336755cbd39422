"""A sweep's experiment for TensorBoard's HParams dashboard, in ``<sweep dir>/tensorboard/``.

TensorBoard shows one experiment per logdir (the hparams plugin takes the first it finds), so the jobs of a
sweep write only their sessions (``trainlab.outputs``) and the sweep declares the experiment once: the
settings its jobs vary first, then the main settings; the monitor, then the test and val metrics. It is
written when the first job has succeeded, whose ``metrics.json`` names the metrics, by ``SweepSummary`` in
that job's process: with any launcher (in-process, joblib, SLURM) and any sweeper (the grid, Optuna).
Until then TensorBoard shows what it infers from the jobs' sessions.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from trainlab.loggers.tensorboard import experiment_summary
from trainlab.outputs import flat_hparams

EXPERIMENT_DIR = "tensorboard"


def write_experiment(sweep_dir: Path, job_config: DictConfig) -> None:
    """Declare the sweep's experiment from a succeeded job's config and results, unless an earlier job (or
    one running in parallel) has. Cheap: one small events file per sweep."""
    folder = sweep_dir / EXPERIMENT_DIR
    if folder.exists():
        return
    results = json.loads((Path(job_config.hydra.runtime.output_dir) / "metrics.json").read_text())
    swept = swept_settings(OmegaConf.load(sweep_dir / "multirun.yaml"))
    summary = experiment_summary(flat_hparams(job_config), results, swept)
    try:
        folder.mkdir()  # the one job that creates it writes it
    except FileExistsError:
        return
    from torch.utils.tensorboard.writer import FileWriter

    writer = FileWriter(str(folder))
    writer.add_summary(summary)
    writer.close()


def swept_settings(sweep_config: DictConfig) -> list[str]:
    """The settings a sweep varies, from its ``multirun.yaml`` (which Hydra's and trainlab's Optuna sweeper
    write): the sweeps of its command line (``seed=0,1,2``, ``model=mlp,cnn``), then its sweeper's search
    space (``hydra.sweeper.params``)."""
    params = sweep_config.hydra.sweeper.get("params") or {}
    overrides = [*sweep_config.hydra.overrides.task, *(f"{key}={value}" for key, value in params.items())]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return list(dict.fromkeys(override.key_or_group for override in parsed if override.is_sweep_override()))
