"""The thread budget of jobs that a launcher runs at once."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def limit_threads_of_parallel_jobs(cfg: DictConfig) -> None:
    """Under a launcher that runs ``n_jobs`` jobs at once (``hydra/launcher=joblib``), set each job's
    ``trainer.num_threads`` to its share of the cores, so that jobs x threads never exceeds them.
    An explicit ``trainer.num_threads`` is kept."""
    if cfg.trainer.get("num_threads") is not None or not HydraConfig.initialized():
        return
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if n_jobs:
        import joblib

        cfg.trainer.num_threads = max(1, joblib.cpu_count() // joblib.effective_n_jobs(n_jobs))
