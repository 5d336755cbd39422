"""Where a run's progress is recorded: loggers, each one class in a module of this package and one YAML file
in ``conf/logger/`` (``logger=tensorboard``, the default; ``logger=csv``; several: ``logger=[tensorboard,csv]``).

A logger implements ``Logger``'s methods it has a use for (each does nothing by default). The trainer calls
them on rank 0 only, through ``Loggers``, which hands every call to each configured logger: ``start`` once,
``log_metrics`` at the logged training steps and ``log_epoch`` after every epoch, ``log_test`` once, and
``finish`` at the end (also when the run failed or was interrupted: then without results). Callbacks add
pictures and texts through the same object (``FitContext.logger``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass
class RunInfo:
    """What a logger may want to know of the run it records.

    Attributes:
        run_dir: the run's folder (Hydra's run dir).
        hparams: the run's settings as flat ``group.key: value`` pairs (``outputs.flat_hparams``).
        metric_names: the task's metrics besides the loss (``acc``, ``f1``; ``mse``...).
        resumed_step: the global step a resumed run continues from; 0 for a new run.
        config_yaml: the resolved run config, as saved in the checkpoints.
    """

    run_dir: Path
    hparams: dict[str, Any]
    metric_names: list[str]
    resumed_step: int = 0
    config_yaml: str = ""


def sweep_dir(run_dir: Path) -> Path | None:
    """The Hydra sweep dir (the folder holding Hydra's ``multirun.yaml``) that ``run_dir`` is a job's run dir
    in; None for a single run."""
    return next(
        (folder for folder in Path(run_dir).resolve().parents if (folder / "multirun.yaml").is_file()), None
    )


class Logger:
    """The interface of a logger; every method may be left as it is (a logger of epochs ignores steps)."""

    def start(self, run: RunInfo) -> None:
        """Called once, before the first epoch (of a resumed run too)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars of a training step (``train/loss_step``, ``lr``), every ``trainer.log_every_n_steps``."""

    def log_epoch(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        """An epoch's training and validation metrics (``train/loss``, ``val/acc``...); ``epoch`` counts from
        1, ``step`` is the global step it ended at."""

    def log_image(self, tag: str, image: Image.Image, step: int) -> None:
        """A picture (the confusion matrix, a grid of inputs)."""

    def log_text(self, tag: str, text: str, step: int) -> None:
        """Markdown text (a table of examples, a report)."""

    def log_pr_curve(self, tag: str, labels: torch.Tensor, probabilities: torch.Tensor, step: int) -> None:
        """A precision-recall curve of one class: ``labels`` true/false, ``probabilities`` of that class."""

    def log_test(self, metrics: dict[str, float], step: int) -> None:
        """The test split's metrics, with the best weights, once."""

    def finish(self, results: dict[str, Any] | None) -> None:
        """The end of the run: its final results (``metrics.json``), or None where it failed or stopped."""


class Loggers(Logger):
    """Several loggers as one: each call goes to every one of them, in order."""

    def __init__(self, loggers: Sequence[Logger] = ()):
        self.loggers = list(loggers)

    def start(self, run: RunInfo) -> None:
        for logger in self.loggers:
            logger.start(run)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def log_epoch(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        for logger in self.loggers:
            logger.log_epoch(metrics, epoch, step)

    def log_image(self, tag: str, image: Image.Image, step: int) -> None:
        for logger in self.loggers:
            logger.log_image(tag, image, step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        for logger in self.loggers:
            logger.log_text(tag, text, step)

    def log_pr_curve(self, tag: str, labels: torch.Tensor, probabilities: torch.Tensor, step: int) -> None:
        for logger in self.loggers:
            logger.log_pr_curve(tag, labels, probabilities, step)

    def log_test(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_test(metrics, step)

    def finish(self, results: dict[str, Any] | None) -> None:
        """Every logger's ``finish``, even where one of them fails (the first error is raised after)."""
        errors = []
        for logger in self.loggers:
            try:
                logger.finish(results)
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]
