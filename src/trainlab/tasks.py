"""What a data set's targets are, and everything that follows from it: the number of model outputs, the
loss, the metrics and how raw outputs become predictions. Trainer and predict both go through a Task."""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
import torchmetrics
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr

from trainlab.errors import ConfigError

Kind = Literal["multiclass", "binary", "regression"]


class Task:
    """A multiclass, binary or regression target.

    Regression targets may be standardised (``target_mean``/``target_std``): the model then learns in
    standardised units, while metrics and predictions are reported in the data's own units.
    """

    def __init__(self, kind: Kind, num_classes: int = 0, target_mean: float = 0.0, target_std: float = 1.0):
        if kind not in ("multiclass", "binary", "regression"):
            raise ConfigError(f"unknown task {kind!r}: use multiclass, binary or regression")
        self.kind = kind
        self.num_classes = num_classes
        self.target_mean = target_mean
        self.target_std = target_std

    @property
    def is_classification(self) -> bool:
        return self.kind != "regression"

    @property
    def num_outputs(self) -> int:
        return self.num_classes if self.kind == "multiclass" else 1

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy, binary cross-entropy or MSE. ``label_smoothing`` mixes the class targets with the
        uniform distribution (for training: evaluation reports the plain loss); regression ignores it."""
        if self.kind == "multiclass":
            return F.cross_entropy(outputs, targets, label_smoothing=label_smoothing)
        if self.kind == "binary":
            soft = self.binary_targets(targets, outputs.dtype, label_smoothing)
            return F.binary_cross_entropy_with_logits(outputs.squeeze(-1), soft)
        return F.mse_loss(outputs.squeeze(-1), self.standardized_targets(targets, outputs.dtype))

    def loss_gradient(
        self, outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0, scale: float = 1.0
    ) -> torch.Tensor:
        """The gradient of ``scale`` times ``loss(outputs, targets, label_smoothing)`` with respect to
        ``outputs``, in their dtype: what ``loss(...).backward()`` would send into the model, computed in fp32 in
        the same few operations whatever the smoothing, without the loss's value (the training step needs
        none: its metrics take the loss from the outputs, ``DeferredMetrics``). Autograd's cross-entropy with
        label smoothing runs 4x the operations of the plain one, forward and backward: 40-80 us more a step
        of a small model on a CPU; this costs the same with or without it, a little less than the plain one."""
        logits = outputs.detach().float()  # no autograd graph: nothing of this is recorded
        if self.kind == "multiclass":  # softmax minus the (smoothed) one-hot targets
            gradient = logits.softmax(-1).sub_(
                soft_targets(logits.shape[-1], label_smoothing, logits.device).index_select(0, targets)
            )
        elif self.kind == "binary":  # sigmoid minus the targets pulled towards one half
            soft = self.binary_targets(targets, logits.dtype, label_smoothing)
            gradient = logits.sigmoid().sub_(soft.view_as(logits))
        else:  # twice the error in standardised units
            gradient = logits.sub(self.standardized_targets(targets, logits.dtype).view_as(logits)).mul_(2)
        return gradient.mul_(scale / targets.shape[0]).to(outputs.dtype)

    def binary_targets(self, targets: torch.Tensor, dtype: torch.dtype, label_smoothing: float) -> torch.Tensor:
        """0/1 targets pulled towards one half by ``label_smoothing``: what the binary loss compares with."""
        return targets.to(dtype) * (1 - label_smoothing) + label_smoothing / 2

    def standardized_targets(self, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Regression targets in the standardised units the model learns (``target_mean``, ``target_std``)."""
        return (targets.to(dtype) - self.target_mean) / self.target_std

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class indices for classification, values in the data's units for regression."""
        if self.kind == "multiclass":
            return outputs.argmax(-1)
        if self.kind == "binary":
            return (outputs.squeeze(-1) > 0).long()
        return outputs.squeeze(-1).float() * self.target_std + self.target_mean

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities (N, num_classes); for binary tasks the two columns (1-p, p)."""
        if self.kind == "multiclass":
            return outputs.float().softmax(-1)
        if self.kind == "binary":
            p = outputs.float().squeeze(-1).sigmoid()
            return torch.stack([1 - p, p], dim=-1)
        raise ValueError("a regression task has no class probabilities")

    @property
    def metric_names(self) -> list[str]:
        """The metrics besides the loss: ``acc``, ``f1`` for classifiers; ``mse``, ``mae``, ``r2`` else."""
        return [name.split("/", 1)[1] for name in self.metrics("_") if not name.endswith("/loss")]

    def metrics(self, prefix: str) -> torchmetrics.MetricCollection:
        """Epoch-accumulated metrics, keyed like their TensorBoard tags (``val/acc``, ``test/f1``...)."""
        fast = {"validate_args": False}
        if self.kind == "multiclass":
            n = self.num_classes
            metrics = {
                "acc": tmc.MulticlassAccuracy(n, average="micro", **fast),
                "f1": tmc.MulticlassF1Score(n, average="macro", **fast),
            }
        elif self.kind == "binary":
            metrics = {"acc": tmc.BinaryAccuracy(**fast), "f1": tmc.BinaryF1Score(**fast)}
        else:
            metrics = {
                "mse": tmr.MeanSquaredError(),
                "mae": tmr.MeanAbsoluteError(),
                "r2": tmr.R2Score(),
            }
        metrics["loss"] = torchmetrics.MeanMetric(nan_strategy="disable")
        return torchmetrics.MetricCollection(metrics, prefix=f"{prefix}/", compute_groups=False)

    def update(self, metrics: torchmetrics.MetricCollection, outputs, targets, loss) -> None:
        """Add one batch to ``metrics``, on the device and with no host synchronisation."""
        outputs = outputs.detach().float()
        if self.kind == "multiclass":
            preds = outputs
        elif self.kind == "binary":
            preds = outputs.squeeze(-1).sigmoid()
        else:
            preds = self.predict(outputs)
        for name, metric in metrics.items(keep_base=True):
            if name == "loss":
                # one value per sample: with nan_strategy="disable" MeanMetric ignores `weight`, and a
                # smaller last batch must not count as much as a full one
                metric.update(loss.detach().float().expand(targets.shape[0]))
            else:
                metric.update(preds, targets)


@functools.lru_cache(maxsize=8)
def soft_targets(num_classes: int, label_smoothing: float, device: torch.device) -> torch.Tensor:
    """Row c: the target distribution of class c, its one-hot vector mixed with the uniform distribution by
    ``label_smoothing`` (F.cross_entropy's)."""
    return torch.eye(num_classes, device=device) * (1 - label_smoothing) + label_smoothing / num_classes


class DeferredMetrics:
    """Training metrics, the loss included, computed from the training steps' outputs in one go.

    A torchmetrics ``update`` costs 0.1-0.3 ms of Python, several percent of a small model's training step
    on a CPU, and the loss's value is no part of a step's work (``Task.loss_gradient``). This keeps the
    steps' (detached, on-device) outputs and targets, and adds them to the metrics once they hold
    ``max_pending`` output values (4 MiB of fp32), or when the metrics are read: once an epoch for MNIST's
    540 batches of 10 outputs. The values are those of per-batch updates, up to float rounding, with no host
    synchronisation.
    """

    def __init__(self, task: Task, prefix: str, label_smoothing: float = 0.0, max_pending: int = 2**20):
        self.task, self.label_smoothing, self.max_pending = task, label_smoothing, max_pending
        self.metrics = task.metrics(prefix)
        self.metrics.persistent(True)  # their state goes into a mid-epoch checkpoint
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pending_values = 0

    def to(self, device: torch.device) -> DeferredMetrics:
        self.metrics.to(device)
        return self

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.pending.append((outputs.detach(), targets))
        self.pending_values += outputs.numel()
        if self.pending_values >= self.max_pending:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        outputs, targets = (torch.cat(column) for column in zip(*self.pending, strict=True))
        self.pending, self.pending_values = [], 0
        outputs = outputs.float()
        # the training loss (label smoothing included) of every sample, as the steps' losses averaged by size
        self.task.update(self.metrics, outputs, targets, self.task.loss(outputs, targets, self.label_smoothing))

    def compute(self) -> dict[str, torch.Tensor]:
        self.flush()
        return self.metrics.compute()

    def state_dict(self) -> dict:
        """For a mid-epoch checkpoint: the metrics' state and the batches not yet added, so that a resumed
        epoch adds them in the same groups as an uninterrupted one, and gets bitwise the same values."""
        outputs, targets = [list(column) for column in zip(*self.pending, strict=True)] or [[], []]
        return {"metrics": self.metrics.state_dict(), "outputs": outputs, "targets": targets}

    def load_state_dict(self, state: dict) -> None:
        self.metrics.load_state_dict(state["metrics"])
        self.pending = list(zip(state["outputs"], state["targets"], strict=True))
        self.pending_values = sum(outputs.numel() for outputs, _ in self.pending)
