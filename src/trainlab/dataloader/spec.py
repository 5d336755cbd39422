"""What a trained model needs to know about its inputs, as plain data: the ``InputSpec``.

A checkpoint stores ``InputSpec.to_dict()`` (under ``"input_spec"``), so prediction, export and serving
read new inputs and preprocess them exactly as training did from the checkpoint alone, without the training
data set. Every data set makes its spec with ``input_spec()``; its kind of input (``kinds/``) says what its
``inputs`` hold and how they are used.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainlab.errors import CheckpointError
from trainlab.tasks import Kind, Task

if TYPE_CHECKING:
    from trainlab.dataloader.kinds import InputKind


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


class Standardize(nn.Module):
    """``standardize`` as a module of fitted buffers: the preprocessing of images and table rows in a served
    or exported model (``InputKind.preprocessing``), in torch and in ONNX alike."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, fill: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("fill", fill)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return standardize(raw, self.mean, self.std, self.fill)


@dataclass
class InputSpec:
    """Everything inference needs about a model's inputs and outputs; only str, int, float, bool, None, lists
    and dicts, so it survives ``torch.load(..., weights_only=True)`` and JSON.

    Fields:
        task: ``multiclass``, ``binary`` or ``regression``.
        num_classes: classes of a classifier (2 for binary); 0 for regression.
        classes: the classes' names, index order; None where the data set names none (then ``"0"``, ``"1"``...).
        kind: the kind of input (``image``, ``table``...): the ``InputKind`` that reads, preprocesses, serves
            and exports them (``dataloader/kinds/``).
        inputs: the kind's own fields, as its module documents them (e.g. ``input_shape``, the fitted
            ``mean`` and ``std``, a table's ``columns``).
        target_mean, target_std: regression only: the model predicts (target - target_mean) / target_std.
    """

    task: Kind
    num_classes: int
    classes: list[str] | None
    kind: str
    inputs: dict[str, Any] = field(default_factory=dict)
    target_mean: float = 0.0
    target_std: float = 1.0

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

    def input_kind(self) -> InputKind:
        """The kind of these inputs, which reads, preprocesses, serves and exports them."""
        from trainlab.dataloader.kinds import InputKind

        return InputKind.of(self)

    @property
    def class_names(self) -> list[str]:
        """The classes' names; their indices where the data set names none."""
        return self.classes or [str(i) for i in range(self.num_classes)]

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
