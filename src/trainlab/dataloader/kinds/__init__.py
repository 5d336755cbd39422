"""Kinds of input: images, table rows, texts (and whatever module is added here): what a model's raw inputs are and
how each is read, preprocessed, served and exported.

A kind is one module of this package. It defines the in-memory data set of its kind (the training side: how
the loaded samples become model inputs, the preprocessing fitted on the training split, its fields of the
input spec) and a subclass of ``InputKind`` (the inference side, made from an ``InputSpec`` alone). Defining
the subclass registers it under its ``name``, and ``InputKind.of(spec)`` finds it by ``spec.kind`` (every
module of this package is imported on the first look-up): no other code branches on which kind it is.

Raw inputs are what a user hands over, decoded: images as float tensors in [0, 1] at the trained size,
table rows as encoded features with NaN for a missing value, texts as token ids and lengths. A batch of them
is one tensor, or a tuple of tensors where a kind needs several (token ids and lengths). ``preprocessing()`` turns raw inputs into model
inputs; it is part of the served and exported model, in torch and in ONNX alike.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NamedTuple

import torch
from pydantic import Strict
from torch import nn

from trainlab.errors import CheckpointError, DataError

if TYPE_CHECKING:
    from trainlab.dataloader.base import Inputs
    from trainlab.dataloader.spec import InputSpec

Number = Annotated[float, Strict()]  # a JSON number (true and false are none)


class Read(NamedTuple):
    """What ``InputKind.read`` makes of ``predict.py input=``'s files."""

    names: list[str]  # each input's name (a file, a row number...): predictions.csv's first column
    inputs: Inputs  # the raw inputs
    targets: torch.Tensor | None = None  # where the files hold them
    notes: list[str] | None = None  # where some inputs are doubtful (an empty text): a note per input, "" or why


class InputKind:
    """The inference side of a kind of input, from its ``InputSpec`` alone. A subclass sets the class
    attributes and implements the methods; ``check``, ``collate`` and ``onnx_dynamic_axes`` fit kinds whose raw
    inputs are one float tensor of ``spec.inputs["input_shape"]`` per sample.

    Class attributes:
        name: the kind's name in input specs (``spec.kind``).
        description: what the inputs are, for messages ("images", "table rows").
        files: what ``predict.py input=`` takes, for messages.
        request_field: the field of ``POST /predict``'s JSON body that holds a list of such inputs; one of
            them is a ``request_type`` (pydantic validates it), described by ``request_description``, and
            ``request_schema()`` is the list's OpenAPI schema.
        file_uploads: whether files uploaded to ``POST /predict`` (multipart) are inputs of this kind.
        onnx_inputs: the names of the exported model's inputs, one per tensor of the raw inputs.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    files: ClassVar[str]
    request_field: ClassVar[str]
    request_type: ClassVar[Any]
    request_description: ClassVar[str]
    file_uploads: ClassVar[bool] = False
    onnx_inputs: ClassVar[tuple[str, ...]] = ("input",)
    kinds: ClassVar[dict[str, type[InputKind]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        InputKind.kinds[cls.name] = cls

    def __init__(self, spec: InputSpec):
        self.spec = spec

    @staticmethod
    def of(spec: InputSpec) -> InputKind:
        """The kind of ``spec``'s inputs; a ``CheckpointError`` for a kind this trainlab does not have."""
        if not InputKind.kinds.get(spec.kind):
            for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
                importlib.import_module(f"{__name__}.{module.name}")
        if spec.kind not in InputKind.kinds:
            raise CheckpointError(
                f"the model takes {spec.kind!r} inputs, which this trainlab does not know (it knows "
                f"{', '.join(sorted(InputKind.kinds))}); use the trainlab version that trained it"
            )
        return InputKind.kinds[spec.kind](spec)

    # -- the model's side ----------------------------------------------------------------------------
    def model_sizes(self) -> dict[str, Any]:
        """What a model's constructor is sized by, besides ``num_outputs``: ``input_shape``; a vocabulary's
        ``vocab_size``..."""
        return {"input_shape": list(self.spec.inputs["input_shape"])}

    def summary(self) -> str:
        """The inputs in a few words, for the log line that names the model: ``35 features from 12 columns``,
        ``3x64x64 images``; by default what a model is sized by."""
        return ", ".join(f"{key} {value}" for key, value in self.model_sizes().items())

    def preprocessing(self) -> nn.Module:
        """Raw inputs to model inputs, as an ``nn.Module`` (its ``forward`` takes the raw tensors)."""
        raise NotImplementedError

    def example(self, n: int, seed: int = 0) -> Inputs:
        """``n`` raw inputs of the right form, to trace and check an export with."""
        raise NotImplementedError

    def onnx_dynamic_axes(self) -> list[dict[int, str]]:
        """Per ONNX input, its axes of any size by name: the batch, where raw inputs are one tensor."""
        return [{0: "batch"}]

    def onnx_axis_max(self) -> dict[str, int]:
        """The largest size of a named dynamic axis, where inputs have one (a text's length: ``max_length``):
        a model may be traced for those sizes alone (an RNN runs that many steps)."""
        return {}

    def check(self, raw: Inputs) -> Inputs:
        """``raw`` as the model takes it, or a ``DataError`` saying how it does not fit."""
        shape = list(self.spec.inputs["input_shape"])
        if not isinstance(raw, torch.Tensor) or list(raw.shape[1:]) != shape:
            given = tuple(raw.shape[1:]) if isinstance(raw, torch.Tensor) else "several tensors"
            raise DataError(f"inputs of shape {given} do not fit this model, which expects {tuple(shape)}")
        return raw.to(torch.float32)

    def collate(self, parts: list[Inputs]) -> Inputs:
        """Raw inputs of several requests (or reads) as one batch."""
        return torch.cat(parts)

    # -- reading -------------------------------------------------------------------------------------
    def read(self, path: Path) -> Read:
        """``predict.py input=<path>``: the inputs' names, raw inputs and targets where the files have them."""
        raise NotImplementedError

    def request_schema(self) -> dict[str, Any]:
        """The OpenAPI schema of ``request_field``'s list in a request (``description``, ``items``...; the
        server adds its type and length)."""
        raise NotImplementedError

    def from_request(self, values: list[Any], max_pixels: int | None = None) -> Inputs:
        """The raw inputs of ``request_field``'s values in a ``POST /predict`` body; bad ones: ``DataError``.
        ``max_pixels``: the most pixels a request's inputs may decode to (``TooLarge``); for images."""
        raise NotImplementedError

    def from_files(self, files: list[tuple[str, bytes]], max_pixels: int | None = None) -> Inputs:
        """The raw inputs of files uploaded to ``POST /predict`` (name, content), where ``file_uploads``."""
        raise DataError(
            f'this model takes {self.description}, not files: send JSON {{"{self.request_field}": [...]}}'
        )

    def arrays_type(self) -> Any:
        """The pydantic type of one raw input given as nested lists of numbers (``"inputs"`` of a request):
        numbers nested as deep as ``input_shape`` (their sizes are checked by ``check``, naming them)."""
        arrays: Any = Number
        for _ in self.spec.inputs["input_shape"]:
            arrays = list[arrays]
        return arrays

    def arrays_schema(self) -> dict[str, Any]:
        """The OpenAPI schema of one raw input given as nested lists of numbers: arrays of ``input_shape``."""
        schema: dict[str, Any] = {"type": "number"}
        for size in reversed(self.spec.inputs["input_shape"]):
            schema = {"type": "array", "minItems": size, "maxItems": size, "items": schema}
        return schema

    def from_arrays(self, values: list[Any]) -> Inputs:
        """Raw inputs given as nested lists of numbers (``"inputs"`` of a request's JSON, ``arrays_type``)."""
        try:
            return torch.tensor(values, dtype=torch.float32)
        except (ValueError, TypeError) as error:
            raise DataError(f"inputs are not arrays of numbers of one shape ({error})") from None
