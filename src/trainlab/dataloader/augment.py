"""Batched augmentation of training images.

The ops work on whole raw batches (N, C, H, W) in [0, 1] on the training device: every sample draws its own
random parameters from the generator it is given, and no op loops over samples in Python. (torchvision's
transforms draw one set of parameters per call, so on a batch every sample would get the same crop.)
The data set applies ``Augment`` to training batches only and seeds the generator per batch, so val, test
and predict never see it and a resumed run augments exactly as an uninterrupted one.
``conf/augment/*.yaml`` names the ops; ``augment=none`` is no augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from trainlab.errors import DataError


class Op(Protocol):
    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws from U(low, high), one per sample, on ``like``'s device."""
    return low + (high - low) * torch.rand(n, generator=generator, device=like.device)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, 1), to broadcast over an image batch."""
    return values.view(-1, 1, 1, 1)


class Augment:
    """The ops of one ``conf/augment/*.yaml``, applied in order. Named (a mapping) so that a config can extend
    another one, and an op can be switched off from the command line with ``augment.ops.flip=null``."""

    def __init__(self, ops: Mapping[str, Op | None]):
        self.ops = [op for op in ops.values() if op is not None]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise DataError(
                f"augmentation works on image batches (N, C, H, W), but this data set's inputs have shape "
                f"{tuple(x.shape[1:])}; use augment=none"
            )
        for op in self.ops:
            x = op(x, generator)
        return x


class RandomCrop:
    """Pad every side by ``padding`` pixels of zeros, then cut the original size out at a random offset."""

    def __init__(self, padding: int = 4):
        self.padding = padding

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, height, width = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p)).permute(0, 2, 3, 1)  # N, H+2p, W+2p, C
        top = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=generator, device=x.device)
        left = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=generator, device=x.device)
        rows = top + torch.arange(height, device=x.device).view(1, -1, 1)
        cols = left + torch.arange(width, device=x.device).view(1, 1, -1)
        samples = torch.arange(n, device=x.device).view(-1, 1, 1)
        return padded[samples, rows, cols].permute(0, 3, 1, 2).contiguous()


class HorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < self.p
        return torch.where(_per_sample(flip), x.flip(-1), x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601, as torchvision's rgb_to_grayscale), (N, 1, H, W)."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


class ColorJitter:
    """Brightness, contrast and saturation each scaled by a factor drawn from [1 - s, 1 + s] per sample
    (the formulas of torchvision's ``adjust_*``; saturation only for RGB)."""

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]

        def factor(strength: float) -> torch.Tensor:
            return _per_sample(_uniform(n, 1 - strength, 1 + strength, x, generator))

        x = (x * factor(self.brightness)).clamp(0, 1)
        mean = _gray(x).mean((1, 2, 3), keepdim=True)
        x = torch.lerp(mean, x, factor(self.contrast)).clamp(0, 1)
        if x.shape[1] == 3:
            x = torch.lerp(_gray(x), x, factor(self.saturation)).clamp(0, 1)
        return x


class RandomErasing:
    """With probability ``p``, fill a rectangle with ``value``: its area a ``scale`` fraction of the image,
    its aspect ratio log-uniform in ``ratio`` (Zhong et al., 2017; torchvision's parameters)."""

    def __init__(
        self,
        p: float = 0.5,
        scale: Sequence[float] = (0.02, 0.33),
        ratio: Sequence[float] = (0.3, 3.3),
        value: float = 0.5,
    ):
        self.p, self.scale, self.ratio, self.value = p, tuple(scale), tuple(ratio), value

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, height, width = x.shape
        area = height * width * _uniform(n, *self.scale, x, generator)
        aspect = torch.exp(_uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), x, generator))
        h = (area * aspect).sqrt().round().clamp(1, height)
        w = (area / aspect).sqrt().round().clamp(1, width)
        top = (_uniform(n, 0, 1, x, generator) * (height - h + 1)).floor()
        left = (_uniform(n, 0, 1, x, generator) * (width - w + 1)).floor()
        rows = torch.arange(height, device=x.device).view(1, -1, 1)
        cols = torch.arange(width, device=x.device).view(1, 1, -1)
        inside = (
            (rows >= top.view(-1, 1, 1))
            & (rows < (top + h).view(-1, 1, 1))
            & (cols >= left.view(-1, 1, 1))
            & (cols < (left + w).view(-1, 1, 1))
        )
        erase = inside & (torch.rand(n, generator=generator, device=x.device) < self.p).view(-1, 1, 1)
        return x.masked_fill(erase.unsqueeze(1), self.value)
