"""Train a model: `python train.py model=cnn dataset=mnist optimizer.lr=3e-4` (see conf/train.yaml)."""

import os

import hydra
from omegaconf import DictConfig

import trainlab.resolvers  # noqa: F401  (registers the resolvers conf/train.yaml uses)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from trainlab.cli import print_config, run_job
    from trainlab.run import build_and_fit, prepare_config
    from trainlab.sweeps.threads import limit_threads_of_parallel_jobs

    def job() -> dict:
        run_dir = HydraConfig.get().runtime.output_dir
        # with ckpt_path (or ckpt_path=auto and a checkpoint in run_dir): the checkpoint's config
        run_cfg = prepare_config(cfg, HydraConfig.get().overrides.task, run_dir)
        limit_threads_of_parallel_jobs(run_cfg)
        print_config(run_cfg)
        return build_and_fit(run_cfg, run_dir)

    metrics = run_job(job, cfg.debug_errors)
    return metrics.get("best_score")  # what sweepers optimise


if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: one process group, one run dir
        from trainlab.distributed import setup

        setup()
    main()

    from trainlab.cli import leave_objects_to_the_os

    leave_objects_to_the_os()
