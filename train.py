"""Train a model: `python train.py model=cnn dataset=mnist optimizer.lr=3e-4` (see conf/train.yaml)."""

import os

import hydra
from omegaconf import DictConfig

import trainlab.resolvers  # noqa: F401  (registers the resolvers conf/train.yaml uses)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from trainlab.cli import print_config, run_job
    from trainlab.run import train
    from trainlab.sweeps.threads import limit_threads_of_parallel_jobs

    limit_threads_of_parallel_jobs(cfg)
    print_config(cfg)
    metrics = run_job(lambda: train(cfg, HydraConfig.get().runtime.output_dir), cfg.debug_errors)
    return metrics.get("best_score")  # what sweepers optimise


if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: one process group, one run dir
        from trainlab.distributed import setup

        setup()
    main()
