"""Export a trained model: `python export.py ckpt=outputs/.../checkpoints/best.ckpt [format=onnx] [output=model.onnx]`."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from trainlab.cli import run_job
    from trainlab.export import export

    run_job(lambda: export(cfg), cfg.debug_errors)


if __name__ == "__main__":
    main()

    from trainlab.cli import leave_objects_to_the_os

    leave_objects_to_the_os()
