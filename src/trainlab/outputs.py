"""What a run writes for other programs besides its checkpoints and its loggers' files: ``metrics.json``
(its final results, which sweeps, benchmarks and predict read), its data set's reports (``write_reports``:
a table's ``columns.md``...), and its settings as flat hyper-parameters for the loggers (``flat_hparams``).
Only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from trainlab import distributed, settings

if TYPE_CHECKING:
    from trainlab.loggers import Logger

METRICS_FILE = "metrics.json"


def write_metrics(run_dir: Path, results: dict[str, Any]) -> None:
    """The run's final results as ``metrics.json`` in its run dir (rank 0)."""
    if distributed.is_main():
        (Path(run_dir) / METRICS_FILE).write_text(json.dumps(results, indent=2) + "\n")


def write_reports(run_dir: Path, reports: dict[str, str], logger: Logger, step: int) -> None:
    """A data set's reports (``BatchedData.reports``: file name -> text) as files in the run dir (rank 0) and
    texts for the loggers (TensorBoard's Text tab: ``data/<name>``; text that is not Markdown as a code
    block)."""
    for name, text in reports.items():
        if distributed.is_main():
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            (Path(run_dir) / name).write_text(text)
        logger.log_text(f"data/{Path(name).stem}", text if name.endswith(".md") else f"```\n{text}```", step)


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
    "cv",
)


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings as flat ``group.key: value`` pairs for TensorBoard's HParams dashboard: the main
    settings first, then the rest in name order. A group's class path (``model._target_``) becomes the
    group's value by class name (``model: MLP``; ``scheduler: none`` without one), and the settings of
    ``settings.NOT_HPARAMS`` (where and how it ran, file paths) are left out."""
    flat: dict[str, Any] = {"scheduler": "none", "augment": "none", "cv": "none"}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and prefix and "." not in prefix:
                    flat[prefix] = str(value).rsplit(".", 1)[-1]
                elif not str(key).startswith("_"):
                    visit(value, f"{prefix}.{key}" if prefix else str(key))
        elif not settings.among(prefix, settings.NOT_HPARAMS):
            flat[prefix] = node if isinstance(node, bool | int | float | str) else str(node)

    visit(OmegaConf.to_container(cfg, resolve=True), "")
    main = [key for key in MAIN_SETTINGS if key in flat]
    return {key: flat[key] for key in [*main, *sorted(set(flat) - set(main))]}
