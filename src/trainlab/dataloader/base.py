"""The interface the trainer, predict and the TensorBoard pictures use of a data set, wherever its samples
live: ``BatchedData``.

A data set's constructor (what ``hydra.utils.instantiate(cfg.dataset)`` calls) only checks and stores its
settings; ``setup()`` loads the samples, splits them and fits the preprocessing (Lightning DataModule's
name for that step), and ``run.build_data`` calls it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from trainlab.dataloader.spec import InputSpec
from trainlab.errors import DataError
from trainlab.tasks import Task

if TYPE_CHECKING:
    from PIL import Image

    from trainlab.dataloader.augment import Augment
    from trainlab.dataloader.kinds import InputKind

Inputs = torch.Tensor | tuple[torch.Tensor, ...]  # a batch's model inputs: one tensor, or several (ids, lengths)
Batch = tuple[Inputs, torch.Tensor]  # model inputs, targets
Normalization = tuple[list[float], list[float]]  # per-channel (mean, std)


def call(model: torch.nn.Module, x: Inputs) -> torch.Tensor:
    """``model`` on a batch's inputs: ``model(x)``, or ``model(*x)`` where the batch carries several."""
    return model(*as_tuple(x))


def as_tuple(x: Inputs) -> tuple[torch.Tensor, ...]:
    """A batch's inputs as a tuple of tensors (of one, where there is one)."""
    return x if isinstance(x, tuple) else (x,)


def count(x: Inputs) -> int:
    """The number of samples in a batch's inputs."""
    return len(x[0] if isinstance(x, tuple) else x)


def chunk(x: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start`` to ``stop`` of a batch's inputs (a view, of each tensor where there are several)."""
    return tuple(t[start:stop] for t in x) if isinstance(x, tuple) else x[start:stop]


def sample(x: Inputs, index: int, cpu: bool = False) -> Inputs:
    """Sample ``index`` of a batch's inputs (of each tensor, where there are several); on the CPU if ``cpu``."""
    if isinstance(x, tuple):
        return tuple(sample(t, index, cpu) for t in x)
    return x[index].cpu() if cpu else x[index]


class BatchedData:
    """Batches already on the device and normalised; training batches alone pass through ``augment``,
    seeded per batch.

    A data set is of one kind of input (``kinds/``: its class attribute ``kind``, an ``InputKind``
    subclass). After ``setup()`` it has ``task`` and ``classes``, and ``input_spec()`` describes its inputs
    as plain data: the kind's fields (``input_fields``) and what its task says.
    """

    kind: type[InputKind]
    task: Task
    classes: list[str] | None = None
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
            kind=self.kind.name,
            inputs=self.input_fields(),
            target_mean=self.task.target_mean,
            target_std=self.task.target_std,
        )

    def input_fields(self) -> dict[str, Any]:
        """The kind's fields of ``input_spec`` (plain data): what reading and preprocessing raw inputs needs
        (``InputKind``)."""
        raise NotImplementedError

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
        return [self.shard(batch) for batch in batches if batch.shape[0] >= self.world]

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

    def reports(self) -> dict[str, str]:
        """What this data set has to say about its inputs, as files for the run dir, also shown in the loggers'
        Text tab: file name -> text (a table's column report ``columns.md``, an image folder's
        ``skipped_files.txt``). None by default."""
        return {}

    def show(self, samples: list[Inputs], captions: list[str]) -> Image.Image | str | None:
        """A picture of some samples' model inputs (``sample`` of a batch), each with its caption, for the
        loggers: an image (a grid of images), Markdown text (a table of texts), or None where this kind of
        input has none to show."""
        return None

    def to(self, device: torch.device | str, channels_last: bool = False) -> BatchedData:
        """Serve batches on ``device``; images in channels-last memory order if asked (faster convolutions)."""
        raise NotImplementedError

    def transform(self, x: Inputs, in_place: bool = False) -> Inputs:
        """Raw inputs to model inputs: the kind's fitted preprocessing (none here); ``in_place``: ``x`` may be
        overwritten."""
        return x

    def untransform(self, x: Inputs) -> Inputs:
        """Model inputs back to raw inputs (images in [0, 1]), for augmentation, pictures and export checks."""
        return x

    def _augment(self, raw: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        """``augment`` applied to a raw training batch with a generator seeded by (seed, epoch, batch), so that
        a resumed run, or a picture of the first batch, draws exactly what an uninterrupted run draws."""
        if self.augment is None:
            return raw
        seed = ((self.seed * 1_000_003 + epoch) * 1_000_003 + batch) % 2**63
        generator = torch.Generator(raw.device).manual_seed(seed)
        return self.augment(raw, generator)
