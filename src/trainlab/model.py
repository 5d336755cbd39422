"""The networks: plain ``nn.Module``s. Each takes ``input_shape`` and ``num_outputs`` from the data set, so
no size is typed twice; everything else comes from ``conf/model/*.yaml``."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn


def _activation(name: str) -> nn.Module:
    """An activation by its ``torch.nn`` class name (``ReLU``, ``GELU``, ``Tanh``...)."""
    try:
        return getattr(nn, name)()
    except AttributeError:
        raise ValueError(f"model.activation={name!r} is not a torch.nn class; try ReLU, GELU or Tanh") from None


class Linear(nn.Sequential):
    """One linear layer on the flattened input: linear regression, logistic regression or a softmax
    classifier, depending on the task's loss."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int):
        super().__init__(nn.Flatten(), nn.Linear(prod(input_shape), num_outputs))


class MLP(nn.Sequential):
    """Fully connected layers: [Linear -> (BatchNorm) -> activation -> (Dropout)] per hidden size."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        hidden_sizes: Sequence[int] = (128,),
        activation: str = "ReLU",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        layers: list[nn.Module] = [nn.Flatten()]
        width = prod(input_shape)
        for size in hidden_sizes:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(_activation(activation))
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(*layers)


class CNN(nn.Sequential):
    """The classic small convnet: [Conv -> ReLU -> MaxPool] per entry of ``channels``, then
    Linear(hidden_size) -> ReLU -> Dropout -> Linear(num_outputs)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        hidden_size: int = 128,
        dropout: float = 0.25,
    ):
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels, height, width = out_channels, height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"{len(channels)} pooling blocks are too many for {tuple(input_shape)} images")
        layers += [
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_outputs),
        ]
        super().__init__(*layers)


class ResNet(nn.Module):
    """torchvision's ResNet-18 adapted to small images: a 3x3 stride-1 stem and no max-pool."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int):
        super().__init__()
        from torchvision.models import resnet18

        self.net = resnet18(num_classes=num_outputs)
        self.net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.net.maxpool = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
