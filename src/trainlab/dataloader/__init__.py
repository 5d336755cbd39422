"""Data sets, their loading and what inference needs of them.

``base``: the interface the trainer uses (``BatchedData``); ``spec``: ``InputSpec``, the plain-data
description of a model's inputs stored in checkpoints; ``kinds``: the kinds of input (``image``, ``table``),
one module each, with their in-memory data sets, preprocessing and readers, and the ``InputKind`` that
inference gets from a spec; ``tensors``: in-memory data sets (splits, batching); ``builtin``: digits,
scikit-learn tables, a synthetic line, MNIST-style images; ``csv_table`` and ``image_folder``: a user's own
table or folder of images; ``cache``: decoded data cached on disk; ``augment``: batched augmentation of
training images; ``folds``: k-fold cross-validation.
"""

import importlib

from trainlab.dataloader.base import Batch, BatchedData
from trainlab.dataloader.builtin import Digits, LinearData, SklearnTable, TorchvisionImages
from trainlab.dataloader.kinds import InputKind
from trainlab.dataloader.kinds.image import ImageData
from trainlab.dataloader.kinds.table import TableData
from trainlab.dataloader.spec import InputSpec
from trainlab.dataloader.tensors import Splits, TensorData
from trainlab.errors import DataError

__all__ = [
    "Batch",
    "BatchedData",
    "CSVTable",
    "DataError",
    "Digits",
    "ImageData",
    "ImageFolderData",
    "InputKind",
    "InputSpec",
    "LinearData",
    "SklearnTable",
    "Splits",
    "TableData",
    "TensorData",
    "TorchvisionImages",
]


# Imported on first use: these read a user's files with pandas and pyarrow (0.2 s to import), which the
# other data sets never need.
LAZY = {"CSVTable": "csv_table", "ImageFolderData": "image_folder"}


def __getattr__(name: str):
    if name in LAZY:
        return getattr(importlib.import_module(f"{__name__}.{LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
