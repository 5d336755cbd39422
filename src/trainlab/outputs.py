"""What a run writes besides its checkpoints: TensorBoard events (``tensorboard/``) and ``metrics.json``.
Only rank 0 writes; on the other ranks of a DDP run every call does nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainlab import distributed


class _NoWriter:
    """Stands in for TensorBoard's writer on ranks other than 0."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class RunOutputs:
    """The run dir's TensorBoard writer (``writer``, for callbacks' pictures too) and its results file.

    Args:
        run_dir: the run's folder.
        purge_step: a resumed run's global step: TensorBoard drops events logged after it by the first run.
    """

    def __init__(self, run_dir: Path, purge_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.writer = (
            SummaryWriter(self.run_dir / "tensorboard", purge_step=purge_step or None)
            if distributed.is_main()
            else _NoWriter()
        )

    def write_layout(self, metric_names: list[str]) -> None:
        """The Custom Scalars charts for a task with these metrics (``acc``, ``f1``; ``mse``...)."""
        self.writer.add_custom_scalars(custom_scalars_layout(metric_names))

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def write_results(self, results: dict[str, Any], hparams: dict[str, Any]) -> None:
        """``metrics.json``, and the run's settings with its final metrics for TensorBoard's HParams tab."""
        if not distributed.is_main():
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        metric_values = {k: v for k, v in results.items() if isinstance(v, float | int) and "/" in k}
        for summary in hparams_summary(hparams, metric_values):
            self.writer.file_writer.add_summary(summary)
        (self.run_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")

    def close(self) -> None:
        self.writer.close()


# Settings shown first in TensorBoard's HParams table: what a reader compares runs by.
MAIN_SETTINGS = (
    "model",
    "dataset",
    "optimizer",
    "optimizer.lr",
    "scheduler",
    "dataset.batch_size",
    "trainer.max_epochs",
    "seed",
)
# Settings that cannot matter to a comparison of results (where things run, how they are shown, file paths).
IGNORED_SETTINGS = (
    "paths.",
    "hydra.",
    "ckpt_path",
    "debug_errors",
    "trainer.device",
    "trainer.progress",
    "trainer.num_threads",
    "trainer.log_every_n_steps",
    "trainer.strategy",
    "dataset.path",
    "dataset.root",
    "dataset.download",
    "dataset.num_workers",
    "dataset.pin_memory",
    "dataset.persistent_workers",
    "callbacks.pictures",
    "model.weights",
)


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings as flat ``group.key: value`` pairs for TensorBoard's HParams dashboard: the main
    settings first, then the rest in name order. A group's class path (``model._target_``) becomes the
    group's value by class name (``model: MLP``; ``scheduler: none`` without one), and the settings of
    ``IGNORED_SETTINGS`` are left out."""
    flat: dict[str, Any] = {"scheduler": "none", "augment": "none"}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and prefix and "." not in prefix:
                    flat[prefix] = str(value).rsplit(".", 1)[-1]
                elif not str(key).startswith("_"):
                    visit(value, f"{prefix}.{key}" if prefix else str(key))
        elif not prefix.startswith(IGNORED_SETTINGS):
            flat[prefix] = node if isinstance(node, bool | int | float | str) else str(node)

    visit(OmegaConf.to_container(cfg, resolve=True), "")
    main = [key for key in MAIN_SETTINGS if key in flat]
    return {key: flat[key] for key in [*main, *sorted(set(flat) - set(main))]}


def custom_scalars_layout(metric_names: list[str]) -> dict[str, dict[str, list]]:
    """TensorBoard's Custom Scalars page: train against val in one chart per metric, and the lr."""
    charts = {name: ["Multiline", [f"train/{name}", f"val/{name}"]] for name in ["loss", *sorted(metric_names)]}
    return {"train vs val": charts | {"lr": ["Multiline", ["lr"]]}}
