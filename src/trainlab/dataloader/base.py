"""The interface the trainer, predict and the TensorBoard pictures use of a data set, wherever its samples
live: ``BatchedData``.

A data set's constructor (what ``hydra.utils.instantiate(cfg.dataset)`` calls) only checks and stores its
settings; ``setup()`` loads the samples, splits them and fits the preprocessing (Lightning DataModule's
name for that step), and ``run.build_data`` calls it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from trainlab.dataloader.spec import InputSpec, standardize
from trainlab.errors import DataError
from trainlab.tasks import Task

if TYPE_CHECKING:
    from trainlab.dataloader.augment import Augment

Batch = tuple[torch.Tensor, torch.Tensor]
Normalization = tuple[list[float], list[float]]  # per-channel (mean, std)


class BatchedData:
    """Batches already on the device and normalised; training batches alone pass through ``augment``,
    seeded per batch.

    After ``setup()`` a subclass has ``task``, ``input_shape``, ``classes`` and the normalisation ``mean``
    and ``std`` (shaped to broadcast over a batch), and ``input_spec()`` describes its inputs as plain data.
    """

    task: Task
    input_shape: tuple[int, ...]
    classes: list[str] | None = None
    mean: torch.Tensor
    std: torch.Tensor
    fill: torch.Tensor | None = None  # tables: the value of a missing raw value, per feature
    rank, world = 0, 1  # under DDP: this process's share of every batch (see ``distribute``)

    def __init__(self, batch_size: int, seed: int, augment: Augment | None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise DataError(f"dataset.batch_size must be a positive integer, got {batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.device = torch.device("cpu")

    def setup(self, normalization: Normalization | None = None) -> BatchedData:
        """Load, split and fit the preprocessing; returns the data set. ``normalization``: the per-channel
        (mean, std) the model's pretrained weights expect, used by images whose ``mean``/``std`` are null
        (``run.expected_normalization``)."""
        raise NotImplementedError

    def input_spec(self) -> InputSpec:
        """What inference needs about the inputs, as plain data (stored in checkpoints)."""
        return InputSpec(
            task=self.task.kind,
            num_classes=self.task.num_classes,
            classes=self.classes,
            input_shape=list(self.input_shape),
            mean=self.mean.flatten().tolist(),
            std=self.std.flatten().tolist(),
            target_mean=self.task.target_mean,
            target_std=self.task.target_std,
            **self.input_fields(),
        )

    def input_fields(self) -> dict:
        """The kind-specific fields of ``input_spec``: images here; tables add their columns."""
        return {"kind": "image"}

    @property
    def num_outputs(self) -> int:
        return self.task.num_outputs

    @property
    def class_names(self) -> list[str]:
        """The classes' names; their indices where the data set names none."""
        return self.classes or [str(i) for i in range(self.task.num_classes)]

    def num_samples(self, split: str) -> int:
        raise NotImplementedError

    def num_batches(self, split: str) -> int:
        return math.ceil(self.num_samples(split) / self.batch_size)

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

    def transform(self, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """Raw inputs to model inputs: the fitted normalisation (and, for tables, imputation); ``in_place``:
        ``x`` may be overwritten."""
        fill = None if self.fill is None else self.fill.to(x.device)
        return standardize(x, self.mean.to(x.device), self.std.to(x.device), fill, in_place)

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
