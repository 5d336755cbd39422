"""The networks: plain ``nn.Module``s. Each takes the sizes its kind of input gives (images and tables:
``input_shape``; texts: ``vocab_size`` and ``padding_idx``) and ``num_outputs`` from the data set, so no size
is typed twice; everything else comes from ``conf/model/*.yaml``, the one place that holds the defaults.

Text models take a batch of token ids (N, L), padded with ``padding_idx`` to the batch's longest text, and
each text's length (N,): whatever pads a text must not change its output, so that a text is classified
alike alone or in any batch, in torch and in ONNX."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainlab.errors import ConfigError


def _activation(name: str) -> nn.Module:
    """An activation by its ``torch.nn`` class name (``ReLU``, ``GELU``, ``Tanh``...)."""
    try:
        return getattr(nn, name)()
    except AttributeError:
        raise ConfigError(f"model.activation={name!r} is not a torch.nn class; try ReLU, GELU or Tanh") from None


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
        hidden_sizes: Sequence[int],
        activation: str,
        dropout: float,
        batch_norm: bool,
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
        channels: Sequence[int],
        kernel_size: int,
        hidden_size: int,
        dropout: float,
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
            raise ConfigError(f"{len(channels)} pooling blocks are too many for {tuple(input_shape)} images")
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


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class TorchvisionModel(nn.Module):
    """Any torchvision classification model by name (``resnet18``, ``efficientnet_b0``, ``vit_b_16``...),
    its last linear layer (the classifier head) replaced by a fresh one with ``num_outputs`` outputs.

    Args:
        name: a name ``torchvision.models.list_models(torchvision.models)`` lists.
        weights: a local file with the model's state dict (torchvision's ``.pth`` downloads are such files);
            its head is left out, so a file for any number of classes fits. null: random initialisation.
            Nothing is downloaded: names of torchvision's weights are refused with the file to fetch.
        freeze_backbone: train the head only; the backbone's parameters get ``requires_grad=False`` and its
            batch-norm statistics stay as loaded (the backbone stays in eval mode).
        options: extra keyword arguments for the model's constructor (e.g. ``aux_logits: false``).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        name: str,
        weights: str | None,
        freeze_backbone: bool,
        options: dict | None,
    ):
        super().__init__()
        import torchvision

        if name not in torchvision.models.list_models(torchvision.models):
            raise ConfigError(f"model.name={name!r} is not a torchvision classification model; e.g. resnet18")
        if input_shape[0] not in (1, 3):
            raise ConfigError(f"torchvision models take 1- or 3-channel images, not inputs of shape {input_shape}")
        self.net = torchvision.models.get_model(name, weights=None, **(options or {}))
        linear = [n for n, m in self.net.named_modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise ConfigError(f"model.name={name}: no linear classifier head to replace; choose another model")
        head_name = linear[-1]
        if weights:
            self._load_backbone(name, weights, head_name)
        parent, _, leaf = head_name.rpartition(".")
        in_features = self.net.get_submodule(head_name).in_features
        setattr(self.net.get_submodule(parent), leaf, nn.Linear(in_features, num_outputs))
        self.head_name = head_name
        self.grayscale = input_shape[0] == 1
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for parameter in self.net.parameters():
                parameter.requires_grad = False
            self.head.requires_grad_(True)

    def _load_backbone(self, name: str, weights: str, head_name: str) -> None:
        import torchvision
        from hydra.utils import to_absolute_path

        path = Path(to_absolute_path(weights))
        if not path.is_file():
            known = torchvision.models.get_model_weights(name).__members__  # IMAGENET1K_V1, DEFAULT...
            key = path.name.rpartition(".")[2]  # ResNet18_Weights.DEFAULT -> DEFAULT
            if key in known:
                raise ConfigError(
                    f"model.weights={path.name} names torchvision's pretrained weights, which would be downloaded, "
                    f"and nothing is downloaded here: fetch {known[key].url} elsewhere and pass "
                    "model.weights=<that file>"
                )
            raise ConfigError(f"model.weights={weights}: no such file; give the path of a saved state dict")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(f"{head_name}.")}
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(f"{head_name}.") for k in missing):
            raise ConfigError(
                f"{path} does not hold {name} weights (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )

    @staticmethod
    def input_normalization(settings: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
        """The per-channel (mean, std) the model's starting weights expect of its inputs, from its settings:
        ImageNet's where it starts from ``weights`` (torchvision's classification weights are ImageNet-trained
        with these statistics); nothing in particular from a random initialisation."""
        return (IMAGENET_MEAN, IMAGENET_STD) if settings.get("weights") else None

    @property
    def head(self) -> nn.Linear:
        return self.net.get_submodule(self.head_name)

    def train(self, mode: bool = True) -> TorchvisionModel:
        super().train(mode)
        if self.freeze_backbone:
            self.net.eval()
            self.head.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.expand(-1, 3, -1, -1) if self.grayscale else x)


# -- texts ------------------------------------------------------------------------------------------------
def padding_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(N, width) boolean: True at the positions past each text's length."""
    return torch.arange(width, device=lengths.device) >= lengths.unsqueeze(1)


def mean_over_text(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` (N, L, D) over each text's own positions."""
    kept = x.masked_fill(padding_mask(lengths, x.shape[1]).unsqueeze(2), 0.0)
    return kept.sum(1) / lengths.unsqueeze(1).to(x.dtype)


class EmbeddingBag(nn.Module):
    """fastText's classifier, the fast baseline: the mean of a text's word embeddings, then a linear layer
    (a bag of words: the order of the words is not seen).

    Args:
        embedding_dim: the size of a word's vector.
        dropout: on the mean vector, in training.
    """

    def __init__(self, vocab_size: int, padding_idx: int, num_outputs: int, embedding_dim: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embedding_dim, num_outputs)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(mean_over_text(self.embedding(ids), lengths)))


def reverse_each(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each text's positions of ``x`` (N, L, D) in reverse order, its padding left where it is."""
    t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    end = lengths.unsqueeze(1)
    index = torch.where(t < end, end - 1 - t, t)
    return x.gather(1, index.unsqueeze(2).expand_as(x))


class RNN(nn.Module):
    """A recurrent network over the words: embedding -> ``num_layers`` of LSTM or GRU (each direction, where
    ``bidirectional``, run over packed sequences: no step is spent on padding), then a linear layer on the
    last step of each direction (the forward one at the text's end, the backward one at its start).

    Args:
        max_length: the longest text (``dataset.max_length``): an exported model runs over this many steps
            (torch.export cannot trace packed sequences, nor an RNN over a sequence of any length), the
            steps past a text's end unused.
        cell: ``LSTM`` or ``GRU``.
        embedding_dim, hidden_size: sizes of a word's vector and of each direction's state.
        dropout: on the word vectors, between layers and on the last states, in training.
    """

    # trainer.precision=auto trains it in fp32: under bf16 autocast on a CPU its LSTM and GRU cells ran 1.5x
    # slower (SMS Spam, 2.3 s an epoch against 1.5 s; docs/benchmarks.md, "Precision")
    auto_bf16 = False

    def __init__(
        self,
        vocab_size: int,
        padding_idx: int,
        num_outputs: int,
        max_length: int,
        cell: str,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
    ):
        super().__init__()
        if cell not in ("LSTM", "GRU"):
            raise ConfigError(f"model.cell must be LSTM or GRU, got {cell!r}")
        directions = 2 if bidirectional else 1
        self.max_length, self.hidden_size = max_length, hidden_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                getattr(nn, cell)(
                    embedding_dim if i == 0 else hidden_size * directions, hidden_size, batch_first=True
                )
                for _ in range(directions)
            )
            for i in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * directions, num_outputs)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        # packed sequences take their lengths on the CPU: copied once (a host sync on a GPU), not per layer
        host_lengths = None if torch.compiler.is_exporting() else lengths.cpu()
        for layer in self.layers:
            x = self.dropout(x)
            outputs = [self._run(layer[0], x, host_lengths)]
            if len(layer) == 2:  # the backward direction: the forward one over each text reversed
                reversed_x = reverse_each(x, lengths)
                outputs.append(reverse_each(self._run(layer[1], reversed_x, host_lengths), lengths))
            x = torch.cat(outputs, 2)
        end = (lengths - 1).view(-1, 1, 1).expand(-1, 1, self.hidden_size)
        last = [x[:, :, : self.hidden_size].gather(1, end).squeeze(1)]
        if x.shape[2] > self.hidden_size:
            last.append(x[:, 0, self.hidden_size :])
        return self.head(self.dropout(torch.cat(last, 1)))

    def _run(self, rnn: nn.Module, x: torch.Tensor, host_lengths: torch.Tensor | None) -> torch.Tensor:
        """``rnn``'s outputs over each text (N, L, hidden), those past its end unspecified; ``host_lengths``:
        the texts' lengths on the CPU (None while exporting: the RNN runs over ``max_length`` steps)."""
        if host_lengths is None:
            width = x.shape[1]
            return rnn(nn.functional.pad(x, (0, 0, 0, self.max_length - width)))[0][:, :width]
        packed = nn.utils.rnn.pack_padded_sequence(x, host_lengths, batch_first=True, enforce_sorted=False)
        return nn.utils.rnn.pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0]


class Transformer(nn.Module):
    """A small Transformer encoder over the words: word embeddings plus learned position embeddings ->
    ``num_layers`` of ``nn.TransformerEncoderLayer`` (pre-norm; padding masked out of attention) -> the mean
    over the text's positions -> a linear layer.

    Args:
        max_length: the longest text (``dataset.max_length``): the positions that have an embedding.
        embedding_dim: the model's width (a word's vector); a multiple of ``num_heads``.
        num_heads, num_layers, feedforward_size: attention heads, layers, and each layer's hidden width.
        dropout: in every layer and on the embeddings, in training.
    """

    def __init__(
        self,
        vocab_size: int,
        padding_idx: int,
        num_outputs: int,
        max_length: int,
        embedding_dim: int,
        num_heads: int,
        num_layers: int,
        feedforward_size: int,
        dropout: float,
    ):
        super().__init__()
        if embedding_dim % num_heads:
            raise ConfigError(
                f"model.embedding_dim={embedding_dim} must be a multiple of model.num_heads={num_heads}"
            )
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.positions = nn.Embedding(max_length, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            embedding_dim, num_heads, feedforward_size, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embedding_dim)
        self.head = nn.Linear(embedding_dim, num_outputs)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(ids) + self.positions.weight[: ids.shape[1]])
        x = self.encoder(x, src_key_padding_mask=padding_mask(lengths, ids.shape[1]))
        return self.head(mean_over_text(self.norm(x), lengths))
