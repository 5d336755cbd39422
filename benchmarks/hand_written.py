"""The hand-written MNIST loops that ``train_speed.py`` measures trainlab against, one process each:

    python benchmarks/hand_written.py reference --model mlp --epochs 5 --data-dir ../shared/datasets

It imports only what its loop uses (torch, torchvision, torchmetrics, TensorBoard; Lightning for
``lightning``), so that its whole-process time is what that loop costs, start to exit. Each prints
``epoch k/N`` when an epoch is done (validated, logged and saved) and ``test/acc=...`` at the end.
``train_speed.py`` runs ``reference``, ``plain`` and ``lightning`` with glibc's malloc told (by environment
variables) to keep freed memory, as trainlab tells it with ``mallopt``, and ends them as trainlab ends its
entry points: ``gc.freeze()``, so that Python's exit does not walk every object left (about a second).

- ``reference``: what a careful user writes with trainlab's libraries and implementation choices: MNIST
  normalised once in memory, shuffled batches by ``index_select``, the CNN in channels-last memory order,
  ``torch.optim.Adam(fused=True)``, torchmetrics accuracy on the validation split every epoch, a
  TensorBoard ``SummaryWriter`` for the epoch's figures, ``torch.save`` of model and optimizer every epoch,
  the test split at the end.
  With ``--bf16``, every forward pass and its loss run under ``torch.autocast("cpu", dtype=torch.bfloat16)``,
  as PyTorch's mixed-precision recipe writes it: the best loop on a CPU that multiplies bf16 fast.
- ``plain``: the same with torch's default (unfused) Adam.
- ``textbook``: the same with the tutorials' data path: torchvision's MNIST with per-sample ``ToTensor`` and
  ``Normalize`` through a ``DataLoader(shuffle=True)``, and the default Adam.
- ``lightning``: a ``LightningModule`` with fused Adam (and the CNN channels-last), fed the in-memory
  batches of ``reference``, with Lightning's default logger (TensorBoard) and checkpoint (model and
  optimizer, every epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import itertools
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BATCH_SIZE, EVAL_BATCH_SIZE, LR = 100, 256, 1e-3  # trainlab evaluates in batches of max(batch_size, 256)
MEAN, STD = 0.1307, 0.3081  # MNIST's, as in conf/dataset/mnist.yaml
N_VAL = 6000  # trainlab's default split: 10% of the 60,000 training images
Autocast = Callable[[], contextlib.AbstractContextManager]  # what forward passes run in (--bf16: autocast)


def network(model: str) -> nn.Module:
    """trainlab's MLP 784-500-10 and CNN (``conf/model/cnn.yaml``), written out."""
    torch.manual_seed(0)
    if model == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10))
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(128, 10),
    )


def split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of the 60,000 training images into 54,000 for training and 6,000 for validation."""
    order = torch.randperm(60_000, generator=torch.Generator().manual_seed(0))
    return order[N_VAL:], order[:N_VAL]


class InMemory:
    """Batches by index from tensors already normalised in memory: shuffled for training, in order else."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.y)) if self.shuffle else torch.arange(len(self.y))
        for index in order.split(self.batch_size):  # index_select: trainlab's choice, faster than x[index]
            yield self.x.index_select(0, index), self.y.index_select(0, index)


def in_memory_splits(data_dir: Path) -> tuple[InMemory, InMemory, InMemory]:
    """Training, validation and test batches of MNIST decoded by torchvision and normalised once."""
    from torchvision.datasets import MNIST

    train, test = (MNIST(str(data_dir), train=flag) for flag in (True, False))

    def normalised(images: torch.Tensor) -> torch.Tensor:
        return images.unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)

    x, y = normalised(train.data), train.targets
    kept, val = split_indices()
    return (
        InMemory(x[kept], y[kept], BATCH_SIZE, shuffle=True),
        InMemory(x[val], y[val], EVAL_BATCH_SIZE, shuffle=False),
        InMemory(normalised(test.data), test.targets, EVAL_BATCH_SIZE, shuffle=False),
    )


def textbook_splits(data_dir: Path) -> tuple[Iterable, Iterable, Iterable]:
    """The tutorials' data path: per-sample transforms through DataLoaders."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train = datasets.MNIST(str(data_dir), train=True, transform=to_tensor)
    test = datasets.MNIST(str(data_dir), train=False, transform=to_tensor)
    kept, val = split_indices()
    return (
        DataLoader(Subset(train, kept.tolist()), batch_size=BATCH_SIZE, shuffle=True),
        DataLoader(Subset(train, val.tolist()), batch_size=EVAL_BATCH_SIZE),
        DataLoader(test, batch_size=EVAL_BATCH_SIZE),
    )


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, accuracy, precision: Autocast) -> tuple[float, float]:
    """Mean loss and torchmetrics accuracy over a split."""
    model.eval()
    accuracy.reset()
    loss, seen = torch.zeros(()), 0
    for x, y in batches:
        with precision():
            outputs = model(x)
            loss += F.cross_entropy(outputs, y, reduction="sum")
        accuracy.update(outputs, y)
        seen += len(y)
    return loss.item() / seen, accuracy.compute().item()


def train_epoch(model: nn.Module, optimizer, batches: Iterable, precision: Autocast) -> tuple[torch.Tensor, int]:
    """The loop's training steps over ``batches``: their summed loss (a tensor: no host sync per step) and
    their number. ``step_profile.py`` times these same steps against trainlab's."""
    model.train()
    train_loss, steps = torch.zeros(()), 0
    for x, y in batches:
        with precision():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        train_loss += loss.detach()
        steps += 1
    return train_loss, steps


def fit(
    model: nn.Module,
    optimizer,
    splits: tuple[Iterable, ...],
    epochs: int,
    limit: int | None,
    out_dir: Path,
    precision: Autocast = contextlib.nullcontext,
):
    """The loop: train (at most ``limit`` batches an epoch), validate, log to TensorBoard and save every
    epoch; test at the end."""
    from torch.utils.tensorboard import SummaryWriter
    from torchmetrics.classification import MulticlassAccuracy

    train, val, test = splits
    accuracy = MulticlassAccuracy(num_classes=10, average="micro")
    writer = SummaryWriter(out_dir / "tensorboard")
    for epoch in range(1, epochs + 1):
        train_loss, steps = train_epoch(model, optimizer, itertools.islice(train, limit), precision)
        val_loss, val_acc = evaluate(model, val, accuracy, precision)
        for tag, value in {
            "train/loss": train_loss.item() / steps,
            "val/loss": val_loss,
            "val/acc": val_acc,
        }.items():
            writer.add_scalar(tag, value, epoch)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out_dir / "last.pt")
        print(f"epoch {epoch}/{epochs}: val/acc={val_acc:.4f}", flush=True)
    print(f"test/acc={evaluate(model, test, accuracy, precision)[1]:.4f}", flush=True)
    writer.close()


def run_lightning(model: nn.Module, splits: tuple[InMemory, ...], epochs: int, limit: int | None, out_dir: Path):
    import logging
    import warnings

    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # its banners and tips
    warnings.filterwarnings("ignore", module="lightning")

    class Module(L.LightningModule):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.model(x), y)
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self._evaluate(batch, "val")

        def test_step(self, batch, batch_idx):
            self._evaluate(batch, "test")

        def _evaluate(self, batch, split: str) -> None:
            x, y = batch
            outputs = self.model(x)
            self.log(f"{split}/loss", F.cross_entropy(outputs, y))
            self.log(f"{split}/acc", (outputs.argmax(-1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=LR, fused=True)

    class EpochLine(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            print(f"epoch {trainer.current_epoch + 1}/{epochs}", flush=True)

    train, val, test = splits
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=out_dir,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=limit or 1.0,
        callbacks=[EpochLine()],
    )
    module = Module(model)
    trainer.fit(module, train, val)
    print(f"test/acc={trainer.test(module, test, verbose=False)[0]['test/acc']:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variant", choices=["reference", "plain", "textbook", "lightning"])
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=None, help="training batches per epoch (default: all)")
    parser.add_argument("--data-dir", type=Path, required=True, help="holds MNIST/raw/")
    parser.add_argument("--bf16", action="store_true", help="forward passes under bf16 autocast (reference)")
    args = parser.parse_args()
    model = network(args.model)
    if args.model == "cnn" and args.variant != "textbook":
        # trainlab's default for convolutional models on the CPU (trainer.channels_last=auto), so the same
        # implementation choice; MNIST's one-channel batches are channels-last already
        model = model.to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory(prefix="hand-written-") as out_dir:
        if args.variant == "lightning":
            run_lightning(model, in_memory_splits(args.data_dir), args.epochs, args.batches, Path(out_dir))
        else:
            splits = (textbook_splits if args.variant == "textbook" else in_memory_splits)(args.data_dir)
            fused = args.variant == "reference"
            optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=fused or None)
            precision = (
                functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
                if args.bf16
                else contextlib.nullcontext
            )
            fit(model, optimizer, splits, args.epochs, args.batches, Path(out_dir), precision)
    if args.variant != "textbook":
        # trainlab's implementation choice: Python's exit does not walk the objects left (as
        # trainlab.cli.leave_objects_to_the_os)
        gc.freeze()


if __name__ == "__main__":
    main()
