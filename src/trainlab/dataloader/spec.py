"""What a trained model needs to know about its inputs, as plain data: the ``InputSpec``.

A checkpoint stores ``InputSpec.to_dict()`` (under ``"input_spec"``), so prediction, export and serving
read new inputs and preprocess them exactly as training did from the checkpoint alone, without the training
data set. Every data set makes its spec with ``input_spec()``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from trainlab.errors import CheckpointError, DataError
from trainlab.tasks import Kind, Task


def standardize(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    fill: torch.Tensor | None = None,
    in_place: bool = False,
) -> torch.Tensor:
    """Raw inputs to model inputs: missing values (NaN) replaced by ``fill``, then ``(x - mean) / std``.
    The one implementation of the normalisation, used in training batches and in inference alike.
    ``in_place``: ``x`` is the caller's own to overwrite (a whole data set: no second copy of it)."""
    x = x.float()
    if fill is not None:
        x = torch.where(x.isnan(), fill, x, out=x) if in_place else torch.where(x.isnan(), fill, x)
    own = in_place or fill is not None  # x may be overwritten
    return (x.sub_(mean) if own else x - mean).div_(std)  # one new tensor at most


@dataclass
class InputSpec:
    """Everything inference needs about a model's inputs and outputs; only str, int, float, bool, None, lists
    and dicts, so it survives ``torch.load(..., weights_only=True)`` and JSON.

    Fields:
        task: ``multiclass``, ``binary`` or ``regression``.
        num_classes: classes of a classifier (2 for binary); 0 for regression.
        classes: the classes' names, index order; None where the data set names none (then ``"0"``, ``"1"``...).
        input_shape: one sample's shape as the model takes it: [channels, height, width] for images (the
            size images are resized to), [features] for tables.
        kind: ``image`` or ``table``: how raw inputs are read (``trainlab.dataloader.inputs``).
        mean, std: the fitted normalisation, per channel (images) or per encoded feature (tables); model
            input = (raw - mean) / std, raw images being in [0, 1].
        target_mean, target_std: regression only: the model predicts (target - target_mean) / target_std.
        dtype: of the model inputs.
        target: tables: the target column's name, read for metrics where a file of new rows has it.
        columns: tables: the raw columns in encoding order, each ``{"name", "type": "number", "fill"}`` (fill:
            the training mean, imputed for a missing value) or ``{"name", "type": "category", "categories":
            [...]}`` (one-hot, one feature per training category; missing or unseen: all zeros).
        feature_names: tables: the encoded features' names (``age``, ``colour=red``...), ``input_shape[0]``.
        na_values: tables: cell texts that mean "missing"; None: pandas' default set.
    """

    task: Kind
    num_classes: int
    classes: list[str] | None
    input_shape: list[int]
    kind: Literal["image", "table"]
    mean: list[float]
    std: list[float]
    target_mean: float = 0.0
    target_std: float = 1.0
    dtype: str = "float32"
    target: str | None = None
    columns: list[dict[str, Any]] = field(default_factory=list)
    feature_names: list[str] | None = None
    na_values: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> InputSpec:
        fields = dataclasses.fields(cls)
        unknown = set(state) - {f.name for f in fields}
        required = {
            f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        if unknown or required - set(state):
            raise CheckpointError(
                f"the checkpoint's input spec has unknown fields {sorted(unknown)} or lacks "
                f"{sorted(required - set(state))}; it was written by another trainlab version"
            )
        return cls(**state)

    # -- what follows from it ------------------------------------------------------------------------
    def task_object(self) -> Task:
        return Task(self.task, self.num_classes, self.target_mean, self.target_std)

    @property
    def class_names(self) -> list[str]:
        """The classes' names; their indices where the data set names none."""
        return self.classes or [str(i) for i in range(self.num_classes)]

    def stat_shape(self) -> tuple[int, ...]:
        """The shape ``mean`` and ``std`` broadcast with: (C, 1, 1) for images, (F,) for tables."""
        return (self.input_shape[0],) + (1,) * (len(self.input_shape) - 1)

    def fill(self) -> torch.Tensor | None:
        """Tables: the value imputed for a missing raw value, per encoded feature (one-hot features are never
        missing: 0); images: None."""
        if self.kind != "table":
            return None
        return torch.tensor(
            [
                v
                for c in self.columns
                for v in ([c["fill"]] if c["type"] == "number" else [0.0] * len(c["categories"]))
            ]
        )

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw inputs (N, *input_shape), as ``inputs.read_inputs`` returns them, to model inputs."""
        if list(raw.shape[1:]) != list(self.input_shape):
            raise DataError(
                f"inputs of shape {tuple(raw.shape[1:])} do not fit this model, which expects "
                f"{tuple(self.input_shape)}"
            )
        shape, device = self.stat_shape(), raw.device
        fill = self.fill()
        return standardize(
            raw,
            torch.tensor(self.mean).view(shape).to(device),
            torch.tensor(self.std).view(shape).to(device),
            None if fill is None else fill.to(device),
        )

    def difference(self, other: InputSpec) -> str | None:
        """The first field in which ``other`` differs from this spec (numbers compared to 1e-5), or None."""
        for key, value in self.to_dict().items():
            if not _close(value, getattr(other, key)):
                return key
        return None


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b
