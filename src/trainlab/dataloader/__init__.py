"""Data sets, their loading and what inference needs of them.

``base``: the interface the trainer uses (``BatchedData``); ``spec``: ``InputSpec``, the plain-data
description of a model's inputs stored in checkpoints; ``tensors``: in-memory data sets (splits,
normalisation, batching); ``builtin``: digits, scikit-learn tables, a synthetic line, MNIST-style images;
``csv_table`` and ``image_folder``: a user's own table or folder of images; ``inputs``: reading prediction
inputs from an ``InputSpec`` alone; ``cache``: decoded data cached on disk; ``augment``: batched
augmentation of training images.
"""

from trainlab.dataloader.base import Batch, BatchedData
from trainlab.dataloader.builtin import Digits, LinearData, SklearnTable, TorchvisionImages
from trainlab.dataloader.csv_table import CSVTable
from trainlab.dataloader.image_folder import ImageFolderData
from trainlab.dataloader.spec import InputSpec
from trainlab.dataloader.tensors import ImageData, Splits, TableData, TensorData
from trainlab.errors import DataError

__all__ = [
    "Batch",
    "BatchedData",
    "CSVTable",
    "DataError",
    "Digits",
    "ImageData",
    "ImageFolderData",
    "InputSpec",
    "LinearData",
    "SklearnTable",
    "Splits",
    "TableData",
    "TensorData",
    "TorchvisionImages",
]
