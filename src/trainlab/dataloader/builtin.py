"""The built-in data sets: scikit-learn's digits and tables, a synthetic line, and torchvision's MNIST,
Fashion-MNIST and CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path

from trainlab.dataloader import cache
from trainlab.dataloader.kinds.image import ImageData
from trainlab.dataloader.kinds.table import TableData
from trainlab.dataloader.tensors import Splits
from trainlab.errors import DataError
from trainlab.tasks import Kind


class Digits(ImageData):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images): the offline default."""

    def load(self) -> Splits:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16
        return Splits(x, torch.from_numpy(bunch.target).long(), classes=[str(c) for c in bunch.target_names])


class TorchvisionImages(ImageData):
    """MNIST, Fashion-MNIST or CIFAR-10 through torchvision's readers, with their official test split.

    The decoded images are cached next to the raw files (see ``trainlab.dataloader.cache``), so only the
    first run decodes them.

    Args:
        name: the torchvision class (``MNIST``, ``FashionMNIST``, ``CIFAR10``).
        root: the folder torchvision reads (``root/MNIST/raw/...``, ``root/cifar-10-batches-py``).
        download: fetch the files when they are missing (needs a network).
    """

    def __init__(self, *, name: str, root: str, download: bool, **settings):
        super().__init__(test_fraction=None, **settings)
        self.name, self.root, self.download = name, Path(to_absolute_path(root)), download

    def _reader(self):
        import torchvision

        reader = getattr(torchvision.datasets, self.name, None)
        if not isinstance(reader, type):
            raise DataError(
                f"dataset.name={self.name} is not one of torchvision's data sets; e.g. MNIST, FashionMNIST, CIFAR10"
            )
        return reader

    def _read(self, train: bool):
        reader = self._reader()
        try:
            return reader(str(self.root), train=train, download=self.download)
        except (RuntimeError, OSError) as error:  # missing files; offline: URLError (an OSError)
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
        d = cache.load_or_decode(folder, self._decode)
        return Splits(d["x_train"], d["y_train"], d["x_test"], d["y_test"], d["classes"])


class SklearnTable(TableData):
    """One of scikit-learn's bundled tables (iris, wine, breast_cancer, diabetes...), by name."""

    def __init__(self, *, name: str, task: Kind, **settings):
        super().__init__(task=task, **settings)
        self.name = name

    def load(self) -> Splits:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{self.name}")()
        y = torch.from_numpy(bunch.target)
        names = getattr(bunch, "target_names", None)
        classes = [str(c) for c in names] if names is not None else None
        return Splits(torch.from_numpy(bunch.data).float(), y, classes=classes, feature_names=bunch.feature_names)


class LinearData(TableData):
    """Synthetic regression y = weight * x + bias + noise, for checking that a linear model recovers it."""

    def __init__(self, *, num_samples: int, weight: float, bias: float, noise: float, x_range: float, **settings):
        super().__init__(task="regression", **settings)
        self.size = num_samples
        self.weight, self.bias, self.noise, self.x_range = weight, bias, noise, x_range

    def load(self) -> Splits:
        generator = torch.Generator().manual_seed(self.seed)
        x = (torch.rand(self.size, 1, generator=generator) * 2 - 1) * self.x_range
        y = self.weight * x[:, 0] + self.bias + self.noise * torch.randn(self.size, generator=generator)
        return Splits(x, y, feature_names=["x"])
