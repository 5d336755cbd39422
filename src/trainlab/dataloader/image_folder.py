"""A folder of images, one sub-folder per class (torchvision's ImageFolder layout), as a data set
(``dataset=image_folder``).

Such folders may not fit in memory, so images are decoded by a ``DataLoader`` batch by batch (worker
processes, pinned memory) and normalised and augmented on the device. The training order is still the
seeded permutation of ``BatchedData.epoch_order``, handed to the loader through a sampler, so a resumed run
sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from hydra.utils import to_absolute_path
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from trainlab.dataloader.base import Batch, BatchedData
from trainlab.dataloader.inputs import read_class_folders
from trainlab.dataloader.tensors import check_fractions, split
from trainlab.errors import DataError
from trainlab.tasks import Task

if TYPE_CHECKING:
    from trainlab.dataloader.folds import KFold

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class _EpochOrder(Sampler[int]):
    """The positions of the current epoch, set before each pass; one sampler per loader, so that the
    loader's persistent workers survive from epoch to epoch."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class ImageFolderData(BatchedData):
    """``root/<class>/<image>``, or ``root/train/<class>/...`` with optional ``val/`` and ``test/`` beside it.

    A split without its own folder is a seeded fraction: ``test_fraction`` of the training images, then
    ``val_fraction`` of the rest, or with ``cv`` that fold of the rest (``conf/cv/``; not with a ``val/``).

    Args:
        root: the folder.
        image_size: every image is resized to this (an int for square images, or [height, width]).
        channels: 3 (RGB) or 1 (grayscale).
        normalize: standardise with ``mean`` and ``std`` (per channel; ImageNet's by default, which is what
            pretrained torchvision weights expect).
        num_workers, pin_memory, persistent_workers: the ``DataLoader``'s, for decoding in parallel.
    """

    memory_format = torch.preserve_format  # of the batches; ``to(..., channels_last=True)`` changes it

    def __init__(
        self,
        *,
        root: str | None,
        image_size: int | Sequence[int],
        channels: int,
        normalize: bool,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        val_fraction: float,
        test_fraction: float,
        seed: int,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        augment=None,
        cv: KFold | None = None,
    ):
        super().__init__(batch_size, seed, augment)
        if root is None:
            raise DataError("dataset=image_folder needs the folder: add dataset.root=<folder of class folders>")
        if channels not in (1, 3):
            raise DataError(f"dataset.channels must be 1 or 3, got {channels}")
        check_fractions(val_fraction, test_fraction)
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.input_shape = (channels, height, width)
        self.mean, self.std = (
            (self._channel_stat(mean, "mean"), self._channel_stat(std, "std"))
            if normalize
            else (torch.zeros(channels, 1, 1), torch.ones(channels, 1, 1))
        )
        self.root = Path(to_absolute_path(root))
        self.val_fraction, self.test_fraction, self.cv = val_fraction, test_fraction, cv
        self.loader_settings = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
        }
        self._loaders: dict[str, tuple[DataLoader, _EpochOrder]] = {}

    def _channel_stat(self, values: Sequence[float], name: str) -> torch.Tensor:
        if len(values) != self.input_shape[0]:
            raise DataError(f"dataset.{name} has {len(values)} values for {self.input_shape[0]}-channel images")
        return torch.tensor(list(values), dtype=torch.float32).view(-1, 1, 1)

    # -- the splits ----------------------------------------------------------------------------------
    def setup(self) -> ImageFolderData:
        if not self.root.is_dir():
            raise DataError(f"dataset.root={self.root} is not a folder; point it at your image folder")
        nested = (self.root / "train").is_dir()
        folders = {name: self.root / name for name in SPLITS if (self.root / name).is_dir()} if nested else {}
        if self.cv and "val" in folders:
            raise DataError(
                f"cv=kfold makes validation folds of the training images, but {folders['val']} is a fixed "
                "validation split: move its images into train/, or drop cv=kfold"
            )
        train = read_class_folders(folders.get("train", self.root), self.input_shape)
        self.classes = list(train.classes)
        if len(self.classes) < 2:
            raise DataError(f"{train.root} has {len(self.classes)} class folder; classification needs at least 2")
        generator = torch.Generator().manual_seed(self.seed)
        kept = torch.arange(len(train))
        self.subsets: dict[str, Dataset] = {}
        for name, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            if name in folders:
                self.subsets[name] = read_class_folders(folders[name], self.input_shape)
                if self.subsets[name].classes != self.classes:
                    raise DataError(
                        f"{folders[name]} has the classes {self.subsets[name].classes}, but the training images "
                        f"have {self.classes}; give every split the same class folders"
                    )
            else:
                if name == "val" and self.cv:
                    kept, held = self.cv.split(kept, torch.as_tensor(train.targets)[kept], self.seed)
                else:
                    kept, held = split(kept, fraction, generator)
                self.subsets[name] = Subset(train, held.tolist())
        self.subsets["train"] = Subset(train, kept.tolist())
        self.task = Task("multiclass", num_classes=len(self.classes))
        self._loaders = {}
        return self

    def num_samples(self, split: str) -> int:
        return len(self.subsets[split])

    # -- batching ------------------------------------------------------------------------------------
    def to(self, device: torch.device | str, channels_last: bool = False) -> ImageFolderData:
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        return self

    def _loader(self, split: str) -> tuple[DataLoader, _EpochOrder]:
        """One DataLoader per split, made on first use (predicting on files never starts workers)."""
        if split not in self._loaders:
            sampler = _EpochOrder()
            if split != "train":  # in order; under DDP, every world-th sample
                sampler.order = list(range(self.rank, self.num_samples(split), self.world))
            settings = dict(
                self.loader_settings, pin_memory=self.loader_settings["pin_memory"] and self.device.type == "cuda"
            )
            loader = DataLoader(
                self.subsets[split],
                batch_size=self.batch_size // self.world,
                sampler=sampler,
                generator=torch.Generator(),  # so iterating never draws from the global RNG
                **settings,
            )
            self._loaders[split] = (loader, sampler)
        return self._loaders[split]

    def _on_device(self, batches: DataLoader) -> Iterator[Batch]:
        for x, y in batches:
            yield (
                x.to(self.device, non_blocking=True, memory_format=self.memory_format),
                y.to(self.device, non_blocking=True),
            )

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        loader, sampler = self._loader("train")
        sampler.order = [i for batch in self.sharded_order(epoch, start) for i in batch.tolist()]
        for batch, (x, y) in enumerate(self._on_device(loader), start):
            yield self.transform(self._augment(x, epoch, batch)), y

    def batches(self, split: str) -> Iterator[Batch]:
        for x, y in self._on_device(self._loader(split)[0]):
            yield self.transform(x), y
