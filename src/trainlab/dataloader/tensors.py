"""Data sets held in memory as tensors: the seeded split, the fitted normalisation and batching by index.

Every data set here fits in memory, so ``setup()`` decodes it once into tensors, splits it, normalises it
once and then serves batches by index from a seeded permutation, on the training device. This is several
times faster than a per-sample DataLoader, and it makes the data order a pure function of (seed, epoch),
which is what exact resume relies on. (Image folders too large for memory stream through a DataLoader in
the same order: ``image_folder.py``; both offer the interface of ``BatchedData``.)

A data set is one subclass of its kind's in-memory data set (``ImageData``, ``TableData``, ``TextData``: ``kinds/``)
that implements ``load()``, and one YAML file in ``conf/dataset/`` that names it with ``_target_``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torchvision.transforms.v2.functional import to_dtype

from trainlab.dataloader.base import Batch, BatchedData, Inputs, Normalization
from trainlab.dataloader.spec import standardize
from trainlab.errors import DataError
from trainlab.tasks import Kind, Task

if TYPE_CHECKING:
    from trainlab.dataloader.augment import Augment
    from trainlab.dataloader.folds import KFold


@dataclass
class Splits:
    """What ``load()`` returns: features as float tensors (or images as uint8 in [0, 255], which ``setup``
    splits before it scales them to [0, 1]: a quarter of the bytes to copy), targets as int64 (classes) or
    float32 (values).

    ``x_test`` (``x_val``) is None where a data set has no test (validation) split of its own; a seeded
    held-out fraction is used (``split_samples``). Tables may hold NaN for missing values (imputed with the
    training means) and name their raw ``columns`` (see ``InputSpec.columns``, without ``fill``); ``kind``
    is the task where the data decides it.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    classes: Sequence[str] | None = None
    feature_names: Sequence[str] | None = None
    columns: list[dict[str, Any]] | None = None
    kind: Kind | None = None
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


def rows(x: Inputs, index: torch.Tensor) -> Inputs:
    """``x[index]`` along the first dimension (of each tensor, where there are several), in ``x``'s memory
    order, by ``index_select``: a row copy, 5x faster than indexing for a batch of 100 MNIST images (10 us
    against 50 us on a CPU: 1-2% of a small model's step). Channels-last images are selected as (N, H, W, C)
    rows, so that they stay channels-last."""
    if isinstance(x, tuple):
        return tuple(rows(t, index) for t in x)
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).index_select(0, index).permute(0, 3, 1, 2)
    return x.index_select(0, index)


def as_float(x: torch.Tensor, copy: bool = False) -> torch.Tensor:
    """Features as float32, uint8 images scaled from [0, 255] to [0, 1]; ``copy``: a new tensor even where
    ``x`` is float32 already."""
    if x.dtype == torch.uint8:
        return to_dtype(x, torch.float32, scale=True)  # as torchvision's readers of new images scale them
    return x.to(torch.float32, copy=copy)


def split(
    index: torch.Tensor, fraction: float, generator: torch.Generator, classes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of sample indices into (kept, held out), ``fraction`` of them held out; with ``classes``
    (each sample's), ``fraction`` of each class (rounded), so that a rare class is held out in proportion."""
    order = torch.randperm(len(index), generator=generator)
    if classes is None:
        n_held = round(len(index) * fraction)
        return index[order[n_held:]], index[order[:n_held]]
    by_class = order[classes[order].argsort(stable=True)]  # each class's samples together, in random order
    counts = torch.bincount(classes)
    start = torch.cumsum(counts, 0) - counts  # where each class begins in by_class
    rank = torch.arange(len(index)) - start[classes[by_class]]  # position within its class
    held = rank < (counts.double() * fraction).round().long()[classes[by_class]]
    return index[by_class[~held]], index[by_class[held]]


def split_samples(
    targets: torch.Tensor,
    seed: int,
    test_fraction: float | None,
    val_fraction: float | None,
    cv: KFold | None = None,
    stratify: bool = False,
) -> dict[str, torch.Tensor]:
    """The seeded split of a data set's training samples (``targets``: theirs): indices of ``train``,
    ``val`` and ``test``.

    ``test_fraction`` of the samples are held out for testing, then ``val_fraction`` of the rest for
    validation, or, with ``cv``, that k-fold's validation part of the rest; a fraction of None leaves that
    split out (the data set has its own). ``stratify``: each fraction is taken of every class (``targets``
    are class indices), as k-fold's folds are. The one place splits are drawn, whether the samples are held in
    memory or streamed from files: the same seed, the same split.
    """
    generator = torch.Generator().manual_seed(seed)
    kept = torch.arange(len(targets))
    indices = {}
    if test_fraction is not None:
        kept, indices["test"] = split(kept, test_fraction, generator, targets[kept] if stratify else None)
    if cv is not None:
        kept, indices["val"] = cv.split(kept, targets[kept], seed)
    elif val_fraction is not None:
        kept, indices["val"] = split(kept, val_fraction, generator, targets[kept] if stratify else None)
    indices["train"] = kept
    return indices


def available_memory() -> int:
    """Bytes of memory available for new data: Linux's estimate (``MemAvailable``), elsewhere the physical
    memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory_budget(memory_budget: float) -> None:
    """``dataset.memory_budget``: the share of the available memory a data set may take, in [0, 1]."""
    if (
        isinstance(memory_budget, bool)
        or not isinstance(memory_budget, int | float)
        or not 0 <= memory_budget <= 1
    ):
        raise DataError(
            f"dataset.memory_budget is a share of the available memory, in [0, 1]; got {memory_budget}"
        )


def check_fractions(val_fraction: float, test_fraction: float | None) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
        raise DataError(f"dataset.val_fraction must be in [0, 1), got {val_fraction}")
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise DataError(f"dataset.test_fraction must be in (0, 1), got {test_fraction}")


class TensorData(BatchedData):
    """A data set held in memory as tensors: the split and batching, whatever the inputs' dtypes, one tensor
    or several per sample. What the loaded samples become (floats, standardised...) is the kind's to say: its
    ``split_inputs``, ``fit_preprocessing`` and ``transform`` (``StandardizedData``; ``kinds/``).

    Args:
        task: multiclass, binary or regression; None where ``load()`` decides it.
        batch_size: samples per training batch.
        val_fraction: share of the training portion held out for validation, in [0, 1).
        test_fraction: share held out for testing; None for data sets with an official test split.
        seed: fixes the splits and every epoch's order.
        normalize: preprocess the inputs as the kind does (images and tables: standardise them).
        augment: batched augmentation of training batches (``conf/augment/``); None: none.
        cv: the fold of k-fold cross-validation (``conf/cv/``) that replaces the ``val_fraction`` split;
            None: none.
    """

    stratify = False  # whether the held-out fractions are drawn per class (``split_samples``)

    def __init__(
        self,
        *,
        task: Kind | None,
        batch_size: int,
        val_fraction: float,
        test_fraction: float | None,
        seed: int,
        normalize: bool,
        augment: Augment | None = None,
        cv: KFold | None = None,
    ):
        super().__init__(batch_size, seed, augment)
        check_fractions(val_fraction, test_fraction)
        self.task_kind, self.val_fraction, self.test_fraction = task, val_fraction, test_fraction
        self.normalize, self.cv = normalize, cv

    def load(self) -> Splits:
        raise NotImplementedError

    def setup(self, normalization: Normalization | None = None) -> TensorData:
        splits = self.load()
        # plain str, not numpy's (scikit-learn's names are): they go into the checkpoint's input spec
        self.classes = [str(c) for c in splits.classes] if splits.classes is not None else None
        self.feature_names = [str(n) for n in splits.feature_names] if splits.feature_names is not None else None
        x, y = splits.x_train, splits.y_train
        if self.cv is not None and splits.x_val is not None:
            raise DataError(
                "cv=kfold makes validation folds of the training samples, but this data set has a fixed "
                "validation split; drop cv=kfold"
            )
        indices = split_samples(  # indices into x: each sample copied once
            y,
            self.seed,
            test_fraction=self.test_fraction if splits.x_test is None else None,
            val_fraction=self.val_fraction if splits.x_val is None else None,
            cv=self.cv,
            stratify=self.stratify,
        )
        self.indices = {name: indices.get(name) for name in ("train", "val", "test")}  # test: None if official
        for name in ("train", "val", "test"):  # each split's own copy, preprocessed in place below
            if name in indices:
                setattr(self, f"x_{name}", self.split_inputs(x, indices[name]))
                setattr(self, f"y_{name}", y[indices[name]])
            else:
                setattr(self, f"x_{name}", self.split_inputs(getattr(splits, f"x_{name}")))
                setattr(self, f"y_{name}", getattr(splits, f"y_{name}"))
        del x

        if isinstance(self.x_train, torch.Tensor):  # one tensor per sample: its shape
            self.input_shape = tuple(self.x_train.shape[1:])
        self.fit_preprocessing(splits, normalization)
        for name in ("x_train", "x_val", "x_test"):  # in place: no second copy of the data set (0.1 s for MNIST)
            setattr(self, name, self.transform(getattr(self, name), in_place=True))
        self.task = self.make_task(splits.kind or self.task_kind)
        return self

    def split_inputs(self, x: Inputs, index: torch.Tensor | None = None) -> Inputs:
        """A split's own copy of the loaded inputs ``x`` (its rows ``index``; all of them: None), which
        ``transform`` may overwrite."""
        if index is not None:
            return rows(x, index)
        return tuple(t.clone() for t in x) if isinstance(x, tuple) else x.clone()

    def fit_preprocessing(self, splits: Splits, normalization: Normalization | None) -> None:
        """Fit the kind's preprocessing on the training split (``x_train``), from the settings; ``normalization``:
        what a pretrained model expects (images, see ``ImageData.choose_normalization``)."""

    def make_task(self, kind: Kind) -> Task:
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
            setattr(self, name, on_device(getattr(self, name), self.device, channels_last))
        return self

    def num_samples(self, split: str) -> int:
        return len(getattr(self, f"y_{split}"))

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Shuffled training batches of ``epoch``, from batch number ``start`` on (to resume mid-epoch)."""
        shards = self.sharded_order(epoch, start)
        if not shards:
            return
        # one copy of the epoch's indices to the device, not one (and a host sync on a GPU) per batch
        indices = torch.cat(shards).to(self.device).split([shard.shape[0] for shard in shards])
        for batch, index in enumerate(indices, start):
            x = self.batch_inputs(self.x_train, index)
            if self.augment is not None:
                x = self.transform(self._augment(self.untransform(x), epoch, batch))
            yield x, rows(self.y_train, index)

    def batches(self, split: str, batch_size: int | None = None) -> Iterator[Batch]:
        """The ``val`` or ``test`` split in order."""
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        step = batch_size or max(self.batch_size, 256)
        for i in range(0, len(y), step):
            index = self.shard(torch.arange(i, min(i + step, len(y)), device=self.device))
            if len(index):
                yield self.batch_inputs(x, index), rows(y, index)

    def batch_inputs(self, x: Inputs, index: torch.Tensor) -> Inputs:
        """A batch's model inputs: the samples ``index`` of a split's ``x`` (texts: cut to the batch's longest)."""
        return rows(x, index)


def on_device(x: Inputs, device: torch.device, channels_last: bool = False) -> Inputs:
    """``x`` (each tensor, where there are several) on ``device``; images (4-d) channels-last if asked."""
    if isinstance(x, tuple):
        return tuple(on_device(t, device, channels_last) for t in x)
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


class StandardizedData(TensorData):
    """Float inputs standardised with the mean and std of the training split, missing values (NaN) filled
    first: what images and table rows share. Loaded uint8 images are scaled to [0, 1] a split at a time."""

    mean: torch.Tensor
    std: torch.Tensor
    fill: torch.Tensor | None = None  # tables: the value of a missing raw value, per feature

    def split_inputs(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return as_float(rows(x, index)) if index is not None else as_float(x, copy=True)

    def fitted_statistics(self, dims: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the training inputs over ``dims``."""
        return self.x_train.mean(dims), self.x_train.std(dims).clamp_min(1e-6)

    def transform(self, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """Raw inputs to model inputs: the fitted imputation and normalisation; ``in_place``: ``x`` may be
        overwritten."""
        fill = None if self.fill is None else self.fill.to(x.device)
        return standardize(x, self.mean.to(x.device), self.std.to(x.device), fill, in_place)

    def untransform(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs back to raw features (images in [0, 1]), for augmentation and pictures."""
        return x * self.std.to(x.device) + self.mean.to(x.device)
