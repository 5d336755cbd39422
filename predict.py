"""Use a trained model: `python predict.py ckpt=outputs/.../checkpoints/best.ckpt [input=... output=...]`."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from trainlab.cli import run_job
    from trainlab.predict import predict

    run_job(lambda: predict(cfg), cfg.debug_errors)


if __name__ == "__main__":
    main()

    from trainlab.cli import leave_objects_to_the_os

    leave_objects_to_the_os()
