"""A folder of images, one sub-folder per class (torchvision's ImageFolder layout), as a data set
(``dataset=image_folder``).

Two ways to serve it, chosen by size (the log says which):

- **In memory**, where the decoded images fit ``memory_budget`` (a fraction of the memory available): the
  folder is decoded once, by ``DataLoader`` workers on every core with a progress bar, and cached next to it
  (``cache.py``; decoded again when its files change), so later runs only read the cache. The images are
  then held as tensors and served exactly as the built-in data sets are (``TensorData``: batches by index
  from the seeded permutation, on the device, augmented there, resumable mid-epoch). Decoding PNGs again
  every epoch costs more than training a small network on them.
- **Streamed**, where they do not fit: a ``DataLoader`` decodes batch by batch (worker processes, pinned
  memory), in the same seeded order, handed to it through a sampler, so a resumed run sees the same batches.
  Statistics to normalise with are computed once on a sample of the training images and cached too.

Both draw the same splits (``tensors.split_samples``), of the same files: every file is decoded by the one
decode function of images (``kinds.image.decode_image``, through the ``ImageFolder``'s loader), and a file
that cannot be (truncated, empty, not an image, over Pillow's pixel limit) is skipped and counted, on both
paths alike: the in-memory decode keeps the images that decoded, and a streamed folder is checked once, by
the same decode, before it is split (both cached with the list of skipped files, so later runs know them
without decoding). The list is logged and written to the run dir (``skipped_files.txt``);
``dataset.on_bad_file=error`` stops before training instead, with one line naming every such file.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from hydra.utils import to_absolute_path
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision.datasets import ImageFolder

from trainlab.dataloader import cache
from trainlab.dataloader.base import Batch, Normalization
from trainlab.dataloader.kinds.image import ImageData, read_class_folders
from trainlab.dataloader.tensors import Splits, available_memory, check_memory_budget, split_samples
from trainlab.devices import cores
from trainlab.errors import DataError
from trainlab.progress import Progress

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DECODE_BATCH = 256  # images per batch a decoding worker hands back
STATISTICS_SAMPLE = 2000  # training images the statistics of a streamed folder are computed on


def in_batches(images: Dataset, workers: int, description: str) -> Iterator[tuple]:
    """The samples of ``images`` in order (images, labels...), decoded in batches by ``workers`` processes (none
    for a single batch), with a progress bar on a terminal."""
    batches = math.ceil(len(images) / DECODE_BATCH)
    workers = min(workers, batches) if batches > 1 else 0
    # its own generator: iterating draws a seed, which must not come from the global RNG (a run that decodes
    # would initialise its model differently from one that reads the cache)
    loader = DataLoader(images, batch_size=DECODE_BATCH, num_workers=workers, generator=torch.Generator())
    with Progress(description, len(images), enabled=sys.stdout.isatty()) as bar:
        for batch in loader:
            yield batch
            bar.advance(len(batch[1]))


class Checked(Dataset):
    """``(pixels, label, error)`` of each file of an ImageFolder (its loader: ``kinds.image.load_image``): a
    file that cannot be decoded gives zeros and its one-line error, so that no DataLoader worker dies of it."""

    def __init__(self, images: ImageFolder, shape: Sequence[int], dtype: torch.dtype):
        self.images, self.shape, self.dtype = images, tuple(shape), dtype

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        path, label = self.images.samples[index]
        try:
            return self.images.loader(path), label, ""
        except DataError as error:
            return torch.zeros(self.shape, dtype=self.dtype), label, str(error)


def decode_folder(
    images: ImageFolder, shape: Sequence[int], description: str, keep: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor, list[int], list[str]]:
    """Every image of ``images`` that decodes (uint8 tensors of ``shape``; with ``keep`` false: checked, not
    kept) and its label, stacked: (N, *shape), (N,); and the positions and errors of those that do not."""
    x = torch.empty((len(images), *shape), dtype=torch.uint8) if keep else None
    y = torch.empty(len(images), dtype=torch.int64)
    bad: list[int] = []
    errors: list[str] = []
    done = 0
    for batch_x, batch_y, batch_errors in in_batches(Checked(images, shape, torch.uint8), cores(), description):
        if x is not None:
            x[done : done + len(batch_y)] = batch_x
        y[done : done + len(batch_y)] = batch_y
        bad += [done + i for i, error in enumerate(batch_errors) if error]
        errors += [error for error in batch_errors if error]
        done += len(batch_y)
    if bad:
        good = torch.ones(len(images), dtype=torch.bool)
        good[bad] = False
        x, y = (x[good] if x is not None else None), y[good]
    return x, y, bad, errors


class _EpochOrder(Sampler[int]):
    """The positions of the current epoch, set before each pass; one sampler per loader, so that the
    loader's persistent workers survive from epoch to epoch."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class ImageFolderData(ImageData):
    """``root/<class>/<image>``, or ``root/train/<class>/...`` with optional ``val/`` and ``test/`` beside it.

    A split without its own folder is a seeded fraction: ``test_fraction`` of the training images, then
    ``val_fraction`` of the rest, or with ``cv`` that fold of the rest (``conf/cv/``; not with a ``val/``).

    Args:
        root: the folder.
        image_size: every image is resized to this (an int for square images, or [height, width]).
        channels: 3 (RGB) or 1 (grayscale).
        memory_budget: the share of the available memory the decoded images (float32) may take to be held in
            memory; larger folders stream. 0: always stream.
        background: the colour transparent images are composited on (a PIL colour: ``white``, ``black``,
            ``"#808080"``).
        on_bad_file: ``skip`` files that cannot be decoded (listed in the log and ``skipped_files.txt``), or
            stop with an ``error`` naming them all.
        mean, std: per channel; null: what a pretrained model expects (``setup``), else fitted on the training
            split.
        num_workers, pin_memory, persistent_workers: the ``DataLoader``'s of a streamed folder.
    """

    memory_format = torch.preserve_format  # of streamed batches; ``to(..., channels_last=True)`` changes it

    def __init__(
        self,
        *,
        root: str | None,
        image_size: int | Sequence[int],
        channels: int,
        memory_budget: float,
        background: str,
        on_bad_file: str,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        **settings,
    ):
        super().__init__(**settings)
        if root is None:
            raise DataError("dataset=image_folder needs the folder: add dataset.root=<folder of class folders>")
        if channels not in (1, 3):
            raise DataError(f"dataset.channels must be 1 or 3, got {channels}")
        check_memory_budget(memory_budget)
        if on_bad_file not in ("skip", "error"):
            raise DataError(f"dataset.on_bad_file must be skip or error, got {on_bad_file!r}")
        from PIL import ImageColor

        try:
            ImageColor.getrgb(background)
        except (ValueError, AttributeError):
            raise DataError(
                f"dataset.background={background} is not a colour; e.g. white, black, '#808080'"
            ) from None
        self.background, self.on_bad_file = background, on_bad_file
        self.skipped: list[tuple[str, str]] = []  # (file, why) of the files that could not be decoded
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.input_shape = (channels, height, width)
        self.root = Path(to_absolute_path(root))
        self.memory_budget = memory_budget
        self.loader_settings = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
        }
        self.in_memory = False
        self._loaders: dict[str, tuple[DataLoader, _EpochOrder]] = {}

    # -- the folders and the path taken --------------------------------------------------------------
    def read_folders(self, to_float: bool = True) -> dict[str, ImageFolder]:
        """The class folders of each split that has its own (``train`` always)."""
        if not self.root.is_dir():
            raise DataError(f"dataset.root={self.root} is not a folder; point it at your image folder")
        nested = (self.root / "train").is_dir()
        paths = {name: self.root / name for name in SPLITS if (self.root / name).is_dir()} if nested else {}
        paths.setdefault("train", self.root)
        if self.cv and "val" in paths:
            raise DataError(
                f"cv=kfold makes validation folds of the training images, but {paths['val']} is a fixed "
                "validation split: move its images into train/, or drop cv=kfold"
            )
        folders = {
            name: read_class_folders(path, self.input_shape, to_float, self.background)
            for name, path in paths.items()
        }
        classes = folders["train"].classes
        if len(classes) < 2:
            raise DataError(f"{paths['train']} has {len(classes)} class folder; classification needs at least 2")
        for name, folder in folders.items():
            if folder.classes != classes:
                raise DataError(
                    f"{paths[name]} has the classes {folder.classes}, but the training images have {classes}; "
                    "give every split the same class folders"
                )
        return folders

    def decoding(self) -> str:
        """What the decoded pixels depend on, naming their caches: ``3x64x64-white``."""
        return "x".join(map(str, self.input_shape)) + "-" + re.sub(r"\W", "", self.background)

    def reports(self) -> dict[str, str]:
        if not self.skipped:
            return {}
        return {"skipped_files.txt": "".join(f"{path}\t{why}\n" for path, why in self.skipped)}

    def setup(self, normalization: Normalization | None = None) -> ImageFolderData:
        folders = self.read_folders()
        images = sum(len(folder) for folder in folders.values())
        size, budget = images * math.prod(self.input_shape) * 4, self.memory_budget * available_memory()
        where = f"{self.root}: {images} images, {size / 2**20:.0f} MiB decoded, budget {budget / 2**20:.0f} MiB"
        self.in_memory = size <= budget
        if self.in_memory:
            log.info("%s: decoded once (cached) and held in memory", where)
            return super().setup(normalization)  # TensorData: load(), split, normalise
        log.info("%s: streamed through a DataLoader (%d workers)", where, self.loader_settings["num_workers"])
        self.setup_stream(folders, normalization)
        return self

    # -- in memory -----------------------------------------------------------------------------------
    def load(self) -> Splits:
        """Every split's images that decode, decoded once and cached (``uint8``) with the list of the others."""
        decoded = cache.load_or_decode(self.root, self.decode, variant=self.decoding())
        self.take_skipped(decoded.pop("skipped"))
        return Splits(**decoded)

    def decode(self, keep: bool = True) -> dict:
        """Every split's images and labels (``keep`` false: only checked), the classes, and the files skipped:
        ``[relative path, error]``."""
        decoded: dict = {"skipped": []}
        for name, folder in self.read_folders(to_float=False).items():
            x, y, bad, errors = decode_folder(folder, self.input_shape, f"decoding {name} images", keep)
            decoded["skipped"] += [
                [str(Path(folder.samples[i][0]).relative_to(self.root)), why]
                for i, why in zip(bad, errors, strict=True)
            ]
            if keep:
                decoded[f"x_{name}"], decoded[f"y_{name}"] = x, y
            decoded["classes"] = folder.classes
        return decoded

    def take_skipped(self, skipped: list[list[str]]) -> None:
        """The files that could not be decoded: logged and kept for ``skipped_files.txt``, or with
        ``on_bad_file=error`` one ``DataError`` naming every one of them."""
        self.skipped = [(path, why.removeprefix(str(self.root / path)).strip()) for path, why in skipped]
        if not self.skipped:
            return
        listed = "; ".join(f"{path} {why}" for path, why in self.skipped)
        if self.on_bad_file == "error":
            raise DataError(
                f"{len(self.skipped)} files of {self.root} cannot be decoded (dataset.on_bad_file=error): {listed}; "
                "remove or replace them, or set dataset.on_bad_file=skip to train without them"
            )
        log.warning(
            "%s: skipped %d files that cannot be decoded (listed in skipped_files.txt in the run dir): %s",
            self.root,
            len(self.skipped),
            listed,
        )

    # -- streamed ------------------------------------------------------------------------------------
    def setup_stream(self, folders: dict[str, ImageFolder], normalization: Normalization | None) -> None:
        checked = cache.load_or_decode(
            self.root, lambda: self.decode(keep=False), variant=f"checked-{self.decoding()}"
        )
        self.take_skipped(checked["skipped"])
        skipped = {str(self.root / path) for path, _ in self.skipped}
        for folder in folders.values():  # the files that decode, as the in-memory path keeps them
            folder.samples = [(path, label) for path, label in folder.samples if path not in skipped]
            folder.imgs, folder.targets = folder.samples, [label for _, label in folder.samples]
        self.classes = list(folders["train"].classes)
        train = folders["train"]
        indices = split_samples(
            torch.as_tensor(train.targets),
            self.seed,
            test_fraction=None if "test" in folders else self.test_fraction,
            val_fraction=None if "val" in folders else self.val_fraction,
            cv=self.cv,
        )
        self.subsets: dict[str, Dataset] = {
            name: Subset(train, indices[name].tolist()) if name in indices else folders[name] for name in SPLITS
        }
        self.mean, self.std = self.choose_normalization(normalization, self.streamed_statistics)
        self.task = self.make_task("multiclass")
        self._loaders = {}

    def streamed_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and standard deviation of a seeded sample of the training images, computed in one
        pass and cached (keyed by the sample: other splits or seeds compute theirs)."""
        train = self.subsets["train"]
        generator = torch.Generator().manual_seed(self.seed)
        sample = torch.randperm(len(train), generator=generator)[:STATISTICS_SAMPLE].sort().values
        key = hashlib.sha1(torch.tensor(train.indices)[sample].numpy().tobytes()).hexdigest()[:12]

        def compute() -> dict[str, torch.Tensor]:
            total = torch.zeros(3, self.input_shape[0], dtype=torch.float64)  # count, sum, sum of squares
            for x, *_ in in_batches(Subset(train, sample.tolist()), cores(), "image statistics"):
                x = x.double().transpose(0, 1).flatten(1)  # (C, pixels)
                total += torch.stack([torch.full_like(x[:, 0], x.shape[1]), x.sum(1), x.square().sum(1)])
            count, sum_, squares = total
            mean = sum_ / count
            std = ((squares - count * mean.square()) / (count - 1)).clamp_min(0).sqrt()
            return {"mean": mean.float(), "std": std.float().clamp_min(1e-6)}

        statistics = cache.load_or_decode(self.root, compute, variant=f"statistics-{self.decoding()}-{key}")
        return statistics["mean"], statistics["std"]

    def num_samples(self, split: str) -> int:
        return super().num_samples(split) if self.in_memory else len(self.subsets[split])

    def to(self, device: torch.device | str, channels_last: bool = False) -> ImageFolderData:
        if self.in_memory:
            return super().to(device, channels_last)
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
        return super().train_batches(epoch, start) if self.in_memory else self._streamed_train(epoch, start)

    def _streamed_train(self, epoch: int, start: int) -> Iterator[Batch]:
        loader, sampler = self._loader("train")
        sampler.order = [i for batch in self.sharded_order(epoch, start) for i in batch.tolist()]
        for batch, (x, y) in enumerate(self._on_device(loader), start):
            yield self.transform(self._augment(x, epoch, batch)), y

    def batches(self, split: str, batch_size: int | None = None) -> Iterator[Batch]:
        return super().batches(split, batch_size) if self.in_memory else self._streamed(split)

    def _streamed(self, split: str) -> Iterator[Batch]:
        for x, y in self._on_device(self._loader(split)[0]):
            yield self.transform(x), y
