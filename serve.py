"""Serve a trained model over HTTP: `python serve.py ckpt=model.ckpt|model.onnx [host=127.0.0.1] [port=8000]`."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    from trainlab.cli import run_job
    from trainlab.serve import serve

    run_job(lambda: serve(cfg), cfg.debug_errors)


if __name__ == "__main__":
    main()
