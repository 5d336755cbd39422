"""Data sets and their loading.

Every data set here fits in memory, so it is decoded once into tensors, split, normalised once and then
served as batches by index from a seeded permutation, on the training device. This is several times
faster than a per-sample DataLoader, and it makes the data order a pure function of (seed, epoch), which
is what exact resume relies on. (Image folders too large for memory stream through a DataLoader in the
same order: ``image_folder.py``; both offer the interface of ``BatchedData``.)

A data set is one subclass of ``TensorData`` that implements ``load()`` and one YAML file in
``conf/dataset/`` that names it with ``_target_``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from hydra.utils import to_absolute_path

from trainlab import datacache
from trainlab.errors import DataError
from trainlab.tasks import Kind, Task

if TYPE_CHECKING:
    from trainlab.augment import Augment

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Splits:
    """What ``load()`` returns: features as float tensors, targets as int64 (classes) or float32 (values).

    ``x_test`` is None where a data set has no official test split; a seeded held-out fraction is used.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    classes: Sequence[str] | None = None
    feature_names: Sequence[str] | None = None


class BatchedData:
    """What the trainer, predict and the TensorBoard pictures use of a data set, wherever its samples live.

    Subclasses set ``task``, ``input_shape``, ``classes``, ``mean`` and ``std``, and serve batches already on
    the device and normalised; ``transform`` maps raw inputs (as ``read_inputs`` returns them) to model
    inputs and ``untransform`` back. Training batches alone pass through ``augment``, seeded per batch.
    """

    task: Task
    input_shape: tuple[int, ...]
    mean: torch.Tensor
    std: torch.Tensor
    rank, world = 0, 1  # under DDP: this process's share of every batch (see ``distribute``)

    def __init__(self, batch_size: int, seed: int, augment: Augment | None):
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise DataError(f"dataset.batch_size must be a positive integer, got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.classes: list[str] | None = None
        self.device = torch.device("cpu")

    @property
    def num_outputs(self) -> int:
        return self.task.num_outputs

    @property
    def class_names(self) -> list[str]:
        """The classes' names; their indices where the data set names none."""
        return self.classes or [str(i) for i in range(self.task.num_classes)]

    def num_samples(self, split: str) -> int:
        raise NotImplementedError

    def distribute(self, rank: int, world: int) -> None:
        """Serve rank ``rank`` of ``world`` processes its share of every batch: ``batch_size`` stays the global
        batch, and each epoch's permutation is split into disjoint shards, one per rank."""
        if self.batch_size % world:
            raise DataError(
                f"dataset.batch_size={self.batch_size} is the global batch and must divide evenly among the "
                f"{world} processes; use a multiple of {world}"
            )
        self.rank, self.world = rank, world

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch's sample indices."""
        return index[self.rank :: self.world]

    def sharded_order(self, epoch: int, start: int = 0) -> list[torch.Tensor]:
        """This rank's batches of an epoch, from batch ``start`` on: each global batch of the epoch's
        permutation, sharded. A last global batch too small to give every rank a sample is dropped."""
        batches = self.epoch_order(epoch)[start * self.batch_size :].split(self.batch_size)
        return [self.shard(batch) for batch in batches if len(batch) >= self.world]

    def num_batches(self, split: str) -> int:
        return math.ceil(self.num_samples(split) / self.batch_size)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The training order of one epoch: a permutation that depends only on the seed and the epoch."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples("train"), generator=generator)

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Shuffled, augmented training batches of ``epoch``, from batch number ``start`` on."""
        raise NotImplementedError

    def batches(self, split: str) -> Iterator[Batch]:
        """The ``val`` or ``test`` split in order, never augmented."""
        raise NotImplementedError

    def to(self, device: torch.device | str, channels_last: bool = False) -> BatchedData:
        """Serve batches on ``device``; images in channels-last memory order if asked (faster convolutions)."""
        raise NotImplementedError

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs (as ``read_inputs`` returns them) to model inputs: the training-time normalisation."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise DataError(
                f"inputs of shape {tuple(x.shape[1:])} do not fit this model, which expects {self.input_shape}"
            )
        return (x.float() - self.mean.to(x.device)).div_(self.std.to(x.device))  # one new tensor, not two

    def untransform(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs back to raw features (images in [0, 1]), for augmentation and pictures."""
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def _augment(self, raw: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        """``augment`` applied to a raw training batch with a generator seeded by (seed, epoch, batch), so that
        a resumed run, or a picture of the first batch, draws exactly what an uninterrupted run draws."""
        if self.augment is None:
            return raw
        seed = ((self.seed * 1_000_003 + epoch) * 1_000_003 + batch) % 2**63
        generator = torch.Generator(raw.device).manual_seed(seed)
        return self.augment(raw, generator)

    def state_dict(self) -> dict:
        """The fitted preprocessing, stored in checkpoints so that predict applies exactly the same."""
        return {
            "mean": self.mean,
            "std": self.std,
            "target_mean": self.task.target_mean,
            "target_std": self.task.target_std,
        }

    def input_spec(self):
        from types import SimpleNamespace

        return SimpleNamespace(to_dict=self.state_dict)

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std = state["mean"], state["std"]
        self.task.target_mean, self.task.target_std = state["target_mean"], state["target_std"]

    def read_inputs(self, path: Path) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
        """Read prediction inputs from ``path``: names, raw features and, where present, targets."""
        raise DataError(f"{type(self).__name__} cannot read prediction inputs from files")


class TensorData(BatchedData):
    """A data set held in memory as tensors: splits, normalisation and batching.

    Args:
        task: multiclass, binary or regression.
        batch_size: samples per training batch.
        val_fraction: share of the training portion held out for validation, in [0, 1).
        test_fraction: share held out for testing where the data set has no official test split.
        seed: fixes the splits and every epoch's order.
        normalize: standardise inputs with ``mean``/``std``; where those are null they are computed on the
            training split, per channel for images and per feature for tables.
        standardize_target: regression only; the model learns standardised targets, metrics stay in units.
        num_workers: unused by in-memory data (kept so every data set takes the same settings).
        augment: batched augmentation of training batches (``conf/augment/``); None: none.
    """

    def __init__(
        self,
        task: Kind,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        normalize: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        standardize_target: bool = False,
        num_workers: int = 0,
        augment: Augment | None = None,
    ):
        super().__init__(batch_size, seed, augment)
        if not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
            raise DataError(f"dataset.val_fraction must be in [0, 1), got {val_fraction}")
        if not 0 < test_fraction < 1:
            raise DataError(f"dataset.test_fraction must be in (0, 1), got {test_fraction}")

        splits = self.load()
        self.classes = list(splits.classes) if splits.classes is not None else None
        self.feature_names = list(splits.feature_names) if splits.feature_names is not None else None
        x, y = splits.x_train.float(), splits.y_train
        generator = torch.Generator().manual_seed(seed)
        if splits.x_test is None:
            x, y, x_test, y_test = _split(x, y, test_fraction, generator)
        else:
            x_test, y_test = splits.x_test.float(), splits.y_test
        self.x_train, self.y_train, self.x_val, self.y_val = _split(x, y, val_fraction, generator)
        self.x_test, self.y_test = x_test, y_test

        self.input_shape = tuple(self.x_train.shape[1:])
        self.mean, self.std = self._fit_normalization(normalize, mean, std)
        self.x_train, self.x_val, self.x_test = map(self.transform, (self.x_train, self.x_val, self.x_test))
        self.task = self._make_task(task, standardize_target)

    def load(self) -> Splits:
        raise NotImplementedError

    # -- preprocessing -------------------------------------------------------------------------------
    def _fit_normalization(self, normalize, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
        stat_shape = (self.input_shape[0],) + (1,) * (len(self.input_shape) - 1)  # channel or feature
        if not normalize:
            return torch.zeros(stat_shape), torch.ones(stat_shape)
        if mean is None or std is None:
            dims = [0, *range(2, self.x_train.dim())]
            fitted_mean = self.x_train.mean(dims)
            fitted_std = self.x_train.std(dims).clamp_min(1e-6)
            mean = fitted_mean if mean is None else mean
            std = fitted_std if std is None else std
        return torch.as_tensor(mean).float().reshape(stat_shape), torch.as_tensor(std).float().reshape(stat_shape)

    def _make_task(self, kind: Kind, standardize_target: bool) -> Task:
        if kind == "regression":
            y = self.y_train.float()
            self.y_train, self.y_val, self.y_test = self.y_train.float(), self.y_val.float(), self.y_test.float()
            if standardize_target:
                return Task(kind, target_mean=y.mean().item(), target_std=max(y.std().item(), 1e-6))
            return Task(kind)
        num_classes = len(self.classes) if self.classes else int(self.y_train.max()) + 1
        if kind == "binary" and num_classes != 2:
            raise DataError(f"a binary task needs 2 classes, this data set has {num_classes}")
        return Task(kind, num_classes=num_classes)

    # -- batching ------------------------------------------------------------------------------------
    def to(self, device: torch.device | str, channels_last: bool = False) -> TensorData:
        """Move every split to ``device`` once, so that batching is an index on the device; ``channels_last``
        stores images as (N, H, W, C) in memory, which convolutions run faster on, and batches keep it."""
        self.device = torch.device(device)
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            tensor = getattr(self, name).to(self.device)
            if channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            setattr(self, name, tensor)
        return self

    def num_samples(self, split: str) -> int:
        return len(getattr(self, f"y_{split}"))

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Shuffled training batches of ``epoch``, from batch number ``start`` on (to resume mid-epoch)."""
        shards = self.sharded_order(epoch, start)
        if not shards:
            return
        # one copy of the epoch's indices to the device, not one (and a host sync on a GPU) per batch
        indices = torch.cat(shards).to(self.device).split([len(shard) for shard in shards])
        for batch, index in enumerate(indices, start):
            x = self.x_train[index]
            if self.augment is not None:
                x = self.transform(self._augment(self.untransform(x), epoch, batch))
            yield x, self.y_train[index]

    def batches(self, split: str, batch_size: int | None = None) -> Iterator[Batch]:
        """The ``val`` or ``test`` split in order."""
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        step = batch_size or max(self.batch_size, 256)
        for i in range(0, len(y), step):
            index = self.shard(torch.arange(i, min(i + step, len(y)), device=self.device))
            if len(index):
                yield x[index], y[index]


def _split(x, y, fraction: float, generator: torch.Generator):
    """Seeded split into (x_keep, y_keep, x_held_out, y_held_out), ``fraction`` of the rows held out."""
    order = torch.randperm(len(y), generator=generator)
    n_held = round(len(y) * fraction)
    keep, held = order[n_held:], order[:n_held]
    return x[keep], y[keep], x[held], y[held]


# -- images ------------------------------------------------------------------------------------------
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(path: Path) -> list[Path]:
    """``path`` itself, or the image files in the folder ``path`` in name order."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
    return files


class ImageData(TensorData):
    """Images as (N, C, H, W) float tensors in [0, 1]; predicts on an image file or a folder of them."""

    def read_inputs(self, path: Path) -> tuple[list[str], torch.Tensor, None]:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms.functional import pil_to_tensor

        files = image_files(path)
        channels, height, width = self.input_shape
        images = []
        for file in files:
            try:
                image = Image.open(file).convert("L" if channels == 1 else "RGB").resize((width, height))
            except UnidentifiedImageError:
                raise DataError(f"{file} is not an image; this model predicts on image files") from None
            images.append(pil_to_tensor(image).float() / 255)
        return [str(f) for f in files], torch.stack(images), None


class Digits(ImageData):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images): the offline default."""

    def __init__(self, **kwargs):
        super().__init__(task="multiclass", **kwargs)

    def load(self) -> Splits:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16
        return Splits(x, torch.from_numpy(bunch.target).long(), classes=[str(c) for c in bunch.target_names])


class TorchvisionImages(ImageData):
    """MNIST, Fashion-MNIST or CIFAR-10 through torchvision's readers, with their official test split.

    The decoded images are cached next to the raw files (see ``trainlab.datacache``), so only the first
    run decodes them.

    Args:
        name: the torchvision class (``MNIST``, ``FashionMNIST``, ``CIFAR10``).
        root: the folder torchvision reads (``root/MNIST/raw/...``, ``root/cifar-10-batches-py``).
        download: fetch the files when they are missing (needs a network).
    """

    def __init__(self, name: str, root: str, download: bool = True, **kwargs):
        self.name, self.root, self.download = name, Path(to_absolute_path(root)), download
        super().__init__(task="multiclass", **kwargs)

    def _reader(self):
        import torchvision

        return getattr(torchvision.datasets, self.name)

    def _read(self, train: bool):
        try:
            return self._reader()(str(self.root), train=train, download=self.download)
        except Exception as error:  # torchvision raises RuntimeError, URLError, OSError... when offline
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = lines[-1] if lines else type(error).__name__  # the last line holds the network's answer
            missing = f"could not be downloaded ({reason})" if self.download else "dataset.download is false"
            raise DataError(
                f"{self.name} files not found under {self.root} and {missing}; "
                f"put the files there or point paths.data_dir at a folder that has them"
            ) from None

    def _decode(self) -> dict:
        """Both splits as uint8 (N, C, H, W) images and int64 labels, plus the class names."""
        decoded = {}
        for split in ("train", "test"):
            data = self._read(train=split == "train")
            images = torch.as_tensor(np.asarray(data.data))
            images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
            decoded[f"x_{split}"] = images.contiguous()
            decoded[f"y_{split}"] = torch.as_tensor(data.targets).long()
        decoded["classes"] = list(data.classes)
        return decoded

    def load(self) -> Splits:
        folder = self.root / getattr(self._reader(), "base_folder", self.name)  # torchvision's layout
        d = datacache.load_or_decode(folder, self._decode)
        x_train, x_test = (d[k].float().div_(255) for k in ("x_train", "x_test"))
        return Splits(x_train, d["y_train"], x_test, d["y_test"], d["classes"])


# -- tables ------------------------------------------------------------------------------------------
class TableData(TensorData):
    """Rows of numeric features; predicts on a CSV with a header naming the feature columns."""

    target_name = "target"

    def read_inputs(self, path: Path) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise DataError(
                f"{path} is not a readable CSV file ({error}); this model predicts from a CSV"
            ) from None
        if not rows:
            raise DataError(f"{path} has no rows")
        header = list(rows[0])
        names = self.feature_names or []
        missing = [name for name in names if name not in header]
        if missing and len(missing) < len(names):  # some names match: the others are missing, not renamed
            raise DataError(f"{path} lacks the feature column(s) {', '.join(missing)}")
        if missing:
            columns = [c for c in header if c != self.target_name]
            if len(columns) != self.input_shape[0]:
                raise DataError(
                    f"{path} has {len(columns)} feature columns ({', '.join(columns)}) but the model expects "
                    f"{self.input_shape[0]} ({', '.join(names)})"
                )
            names = columns
        try:
            x = torch.tensor([[float(row[c]) for c in names] for row in rows])
            y = None
            if self.target_name in header:
                y = torch.tensor([float(row[self.target_name]) for row in rows])
                y = y.long() if self.task.is_classification else y
        except ValueError as error:
            raise DataError(f"{path}: every feature must be a number ({error})") from None
        return [str(i) for i in range(len(rows))], x, y


class SklearnTable(TableData):
    """One of scikit-learn's bundled tables (iris, wine, breast_cancer, diabetes...), by name."""

    def __init__(self, name: str, task: Kind, **kwargs):
        self.name = name
        super().__init__(task=task, **kwargs)

    def load(self) -> Splits:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{self.name}")()
        y = torch.from_numpy(bunch.target)
        names = getattr(bunch, "target_names", None)
        classes = [str(c) for c in names] if names is not None else None
        return Splits(torch.from_numpy(bunch.data).float(), y, classes=classes, feature_names=bunch.feature_names)


class LinearData(TableData):
    """Synthetic regression y = weight * x + bias + noise, for checking that a linear model recovers it."""

    def __init__(self, num_samples=1000, weight=2.0, bias=1.0, noise=0.1, x_range=3.0, **kwargs):
        self.params = (num_samples, weight, bias, noise, x_range)
        super().__init__(task="regression", **kwargs)

    def load(self) -> Splits:
        num_samples, weight, bias, noise, x_range = self.params
        generator = torch.Generator().manual_seed(self.seed)
        x = (torch.rand(num_samples, 1, generator=generator) * 2 - 1) * x_range
        y = weight * x[:, 0] + bias + noise * torch.randn(num_samples, generator=generator)
        return Splits(x, y, feature_names=["x"])
