"""Benchmark: trainlab against a plain PyTorch loop, the textbook torchvision DataLoader loop and PyTorch
Lightning on MNIST, interleaved and repeated in one process; prints the table and writes docs/benchmarks.md.

    python benchmarks/train_speed.py                              # MLP and CNN: about 5 minutes on 2 idle cores
    python benchmarks/train_speed.py --models mlp --repeats 1     # a quick look
    python benchmarks/train_speed.py --data-dir /data --threads 1 # data elsewhere; one thread on a busy machine

A development tool, run from the checkout (it times the checkout's train.py); variant (d) needs Lightning,
``pip install -e ".[bench]"``, and is skipped without it.

Every variant does the same work per epoch: it trains the same network on 54,000 MNIST images in shuffled
batches of 100 with Adam (lr 1e-3), then evaluates 6,000 validation images (trainlab's default split).

- (a) trainlab: `trainlab.run.build` and `Run.fit` on a config composed as train.py composes it (checkpoints,
  TensorBoard)
- (a') the same with `trainer.channels_last=true` (the CNN only)
- (b) plain loop: in-memory normalised tensors, batches by index from `randperm`, `torch.optim.Adam(lr=1e-3)`
- (c) textbook: torchvision's MNIST with per-sample `ToTensor` and `Normalize`, `DataLoader(batch_size=100,
  shuffle=True)`, the loop of (b)
- (d) Lightning: a `LightningModule` fed the same in-memory batches as (b), its default logger and checkpoints

An epoch's time is the steady state: the mean time between epoch ends after the first epoch, which pays
one-off costs (allocations, lazy imports, Lightning's set-up). The variants take turns within each round,
and the tables show each one's best round: other jobs on a shared machine only ever add time. The CNN's
epochs stop after `--cnn-batches` training batches (100 by default; the validation stays whole), so that
its rounds take minutes, not an hour, on a CPU. FLOP counts come from torch's FLOP counter
(`torch.utils.flop_counter`); the peak is the best large fp32 `torch.mm`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from trainlab.callbacks import Callback
from trainlab.dataloader import cache as datacache
from trainlab.run import build, build_data

if TYPE_CHECKING:
    from trainlab.dataloader import TensorData

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZE, EVAL_BATCH_SIZE, LR = 100, 1000, 1e-3
MODELS = {  # the networks, as conf/model overrides
    "mlp": ["model=mlp", "model.hidden_sizes=[500]", "model.dropout=0.0"],
    "cnn": ["model=cnn"],
}
VARIANTS = {
    "trainlab": "(a) trainlab",
    "trainlab_cl": "(a') trainlab, channels_last",  # the CNN only
    "plain": "(b) plain loop",
    "textbook": "(c) textbook",
    "lightning": "(d) Lightning",
}


NOTES = """\
### Reading the figures

- **6·P·N over-counts** the MLP's work: the first layer needs no gradient for its input (the images), so
  the matrix products of a training step come to about 4·P·N; the *counted* column is torch's own count of
  them. The issue's 60% target is stated in 6·P·N.
- **What bounds the MLP.** Its matrix products are small (batches of 100 against 784x500 weights) and run
  below the large-matrix peak (*forward + backward, timed alone*). The Adam update reads and writes about
  11 MB per step (weights, gradients and two moments of 397,510 parameters), which memory bandwidth limits,
  not arithmetic; fused Adam makes one pass over them where torch's default makes seven. The rest is the
  batch gather, the validation pass, two checkpoints per epoch and Python's microseconds per operation.
- **trainlab beats the plain loop** on the same data path through fused Adam; its loop's own extras
  (metrics updated 64 batches at a time, the progress bar, logging every 50 steps) cost tens of
  microseconds per step.
- **The CNN is compute-bound** on a CPU: forward and backward take nearly all of a step, so the data path,
  the whole difference between the textbook loop and the others, can only save a small share; 3x faster
  than the textbook loop is out of reach there by arithmetic, not overhead. With 100 training batches per
  epoch, validating 6,000 images is a large part of it, and most of trainlab's lead over (b) comes from
  there: trainlab evaluates in batches of 256, which this CPU runs faster than (b)'s 1000. Channels-last
  memory order speeds up the convolutions themselves.
- **Start-up** is mostly imports: torch, then torchmetrics, which imports torchvision and with it torch's
  compiler stack (`torch._dynamo`). Reading the cached MNIST and building the model take a fraction of a
  second.
"""


class BenchError(RuntimeError):
    """A setting the benchmark cannot run with; the message says what to change."""


# -- timing --------------------------------------------------------------------------------------------
@dataclass
class Clock(Callback):
    """Epoch ends, as a trainlab callback or called by hand; ``epoch_s`` is the steady-state epoch time."""

    ticks: list[float] = field(default_factory=list)

    def tick(self) -> None:
        self.ticks.append(time.perf_counter())

    def on_epoch_end(self, context, metrics) -> None:
        self.tick()

    @property
    def epoch_s(self) -> float:
        if len(self.ticks) < 2:
            raise BenchError("need at least 2 epochs for a steady-state epoch time; pass --epochs 2 or more")
        return (self.ticks[-1] - self.ticks[0]) / (len(self.ticks) - 1)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matrix-product rate in GFLOP/s: the best of ``repeats`` n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    fastest = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / fastest / 1e9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- the work ------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """What every variant of one model shares: the composed config, the data, the epochs and the training
    batches per epoch (None: all; the validation split is always evaluated whole)."""

    cfg: DictConfig
    data: TensorData
    epochs: int
    batches: int | None
    workdir: Path

    @property
    def n_train(self) -> int:
        """Training images per epoch."""
        return min(len(self.data.y_train), (self.batches or len(self.data.y_train)) * BATCH_SIZE)

    def new_model(self) -> nn.Module:
        torch.manual_seed(0)
        return instantiate(self.cfg.model, input_shape=list(self.data.input_shape), num_outputs=10)

    def flops(self) -> tuple[int, int]:
        """FLOPs of one training step (forward and backward) and of one evaluation batch, as torch's FLOP
        counter finds them on batches of ``BATCH_SIZE``."""
        from torch.utils.flop_counter import FlopCounterMode

        model, x, y = self.new_model(), self.data.x_train[:BATCH_SIZE], self.data.y_train[:BATCH_SIZE]
        with FlopCounterMode(display=False) as step:
            F.cross_entropy(model(x), y).backward()
        with FlopCounterMode(display=False) as forward, torch.no_grad():
            model(x)
        return step.get_total_flops(), forward.get_total_flops()

    def flops_per_epoch(self) -> tuple[float, float | None]:
        """(counted, 6·params·samples): the work of one epoch as counted, and the usual estimate, which is
        meaningful for fully connected nets only (and counts the first layer's unneeded input gradient)."""
        step, forward = self.flops()
        n_train, n_val = self.n_train, len(self.data.y_val)
        counted = (step * n_train + forward * n_val) / BATCH_SIZE
        model = self.new_model()
        if any(isinstance(m, nn.Conv2d) for m in model.modules()):
            return counted, None
        params = sum(p.numel() for p in model.parameters())
        return counted, 6 * params * n_train + 2 * params * n_val


def compose_config(
    model: str, data_dir: Path, epochs: int, batches: int | None, threads: int | None
) -> DictConfig:
    overrides = [
        "dataset=mnist",
        f"paths.data_dir={data_dir}",
        f"dataset.batch_size={BATCH_SIZE}",
        "optimizer=adam",
        f"optimizer.lr={LR}",
        f"trainer.max_epochs={epochs}",
        "trainer.label_smoothing=0",  # the plain cross-entropy of the other loops: the same work and accuracy
        f"trainer.limit_batches={batches or 'null'}",  # per split: the validation's 24 batches stay whole
        "trainer.progress=false",
        f"trainer.num_threads={threads or 'null'}",
        *MODELS[model],
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def run_trainlab(setup: Setup, clock: Clock, channels_last: bool = False) -> float:
    """(a): train.py's code path, with the config's checkpoints and TensorBoard logging; ``clock`` is one more
    of the trainer's callbacks."""
    cfg = setup.cfg.copy()
    cfg.trainer.channels_last = channels_last
    run = build(cfg)
    run.trainer.callbacks["clock"] = clock
    with tempfile.TemporaryDirectory(dir=setup.workdir) as run_dir, contextlib.redirect_stderr(io.StringIO()):
        return run.fit(cfg, run_dir)["val/acc"]  # its summary table goes to the redirected stderr


def run_trainlab_channels_last(setup: Setup, clock: Clock) -> float:
    """(a'): the same with ``trainer.channels_last=true``, for convolutional nets."""
    return run_trainlab(setup, clock, channels_last=True)


def run_plain(setup: Setup, clock: Clock) -> float:
    """(b): the loop everyone writes, over tensors already in memory."""
    model, data = setup.new_model(), setup.data
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(setup.epochs):
        model.train()
        for index in torch.randperm(len(data.y_train)).split(BATCH_SIZE)[: setup.batches]:
            loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _, accuracy = _validate(model, InMemoryBatches(data.x_val, data.y_val, EVAL_BATCH_SIZE, shuffle=False))
        clock.tick()
    return accuracy


def run_textbook(setup: Setup, clock: Clock) -> float:
    """(c): torchvision's MNIST with per-sample transforms through a DataLoader, as in the tutorials."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    mnist = datasets.MNIST(setup.cfg.paths.data_dir, train=True, transform=to_tensor)
    n_train, n_val = len(setup.data.y_train), len(setup.data.y_val)  # as many as in trainlab's split
    train_loader = DataLoader(Subset(mnist, range(n_train)), batch_size=BATCH_SIZE, shuffle=True)
    val_loader = DataLoader(Subset(mnist, range(n_train, n_train + n_val)), batch_size=EVAL_BATCH_SIZE)
    model = setup.new_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(setup.epochs):
        model.train()
        for x, y in itertools.islice(train_loader, setup.batches):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _, accuracy = _validate(model, val_loader)
        clock.tick()
    return accuracy


@torch.no_grad()
def _validate(model: nn.Module, batches) -> tuple[float, float]:
    model.eval()
    loss, correct, seen = 0.0, 0, 0
    for x, y in batches:
        outputs = model(x)
        loss += F.cross_entropy(outputs, y, reduction="sum").item()
        correct += (outputs.argmax(-1) == y).sum().item()
        seen += len(y)
    return loss / seen, correct / seen


class InMemoryBatches:
    """Shuffled batches by index, re-iterable, with a length: what (b) iterates over, for Lightning."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.y)) if self.shuffle else torch.arange(len(self.y))
        for index in order.split(self.batch_size):
            yield self.x[index], self.y[index]


def run_lightning(setup: Setup, clock: Clock) -> float:
    """(d): a LightningModule with the usual logging, fed the same in-memory batches as (b)."""
    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # its banners and tips

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
            x, y = batch
            outputs = self.model(x)
            self.log("val/loss", F.cross_entropy(outputs, y))
            self.log("val/acc", (outputs.argmax(-1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=LR)

    class Ticks(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            clock.tick()

    data = setup.data
    trainer = L.Trainer(
        max_epochs=setup.epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=setup.workdir,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=setup.batches or 1.0,
        callbacks=[Ticks()],
    )
    trainer.fit(
        Module(setup.new_model()),
        InMemoryBatches(data.x_train, data.y_train, BATCH_SIZE, shuffle=True),
        InMemoryBatches(data.x_val, data.y_val, EVAL_BATCH_SIZE, shuffle=False),
    )
    return float(trainer.callback_metrics["val/acc"])


RUNNERS = {
    "trainlab": run_trainlab,
    "trainlab_cl": run_trainlab_channels_last,
    "plain": run_plain,
    "textbook": run_textbook,
    "lightning": run_lightning,
}


# -- start-up ------------------------------------------------------------------------------------------
def startup_times(data_dir: Path, threads: int | None, repeats: int = 3) -> dict[str, float]:
    """Seconds from starting a process to: torch imported; torchmetrics imported (it imports torchvision);
    trainlab's data and model built (its log line); the first epoch of a one-batch run logged (start-up
    plus one training step and one validation batch). The best of ``repeats`` runs of each."""
    imports = {"import_torch": "import torch", "import_torchmetrics": "import torchmetrics"}
    runs = [
        {name: _timed(lambda code=code: subprocess.run([sys.executable, "-c", code], check=True))}
        for _ in range(repeats)
        for name, code in imports.items()
    ]
    runs += [_train_py_startup(data_dir, threads) for _ in range(repeats)]
    return {name: min(run[name] for run in runs if name in run) for name in [*imports, "built", "first_step"]}


def _train_py_startup(data_dir: Path, threads: int | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable,
            str(ROOT / "train.py"),
            "dataset=mnist",
            f"paths.data_dir={data_dir}",
            *MODELS["mlp"],
            "trainer.max_epochs=1",
            "trainer.limit_batches=1",
            "trainer.progress=false",
            f"trainer.num_threads={threads or 'null'}",
            f"hydra.run.dir={run_dir}",
        ]
        marks = {"built": re.compile(r"\] - model \w+ \("), "first_step": re.compile(r"\] - epoch 1/1: ")}
        times = {}
        start = time.perf_counter()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
            for line in process.stdout:
                for name, pattern in marks.items():
                    if name not in times and pattern.search(line):
                        times[name] = time.perf_counter() - start
        if process.returncode or len(times) < len(marks):
            raise BenchError(f"the start-up run failed (exit code {process.returncode}): {' '.join(command)}")
    return times


def decode_and_cache_times(data_dir: Path) -> dict[str, float]:
    """Seconds to decode MNIST's two splits with torchvision's reader, and to read trainlab's cache of them
    instead (best of 3; the Setups wrote the cache); the cache is memory-mapped, so both are timed until every
    byte has been read."""
    from torchvision import datasets

    def decode() -> dict[str, torch.Tensor]:
        splits = [datasets.MNIST(str(data_dir), train=train) for train in (True, False)]
        return {
            f"{name}_{i}": getattr(split, name) for i, split in enumerate(splits) for name in ("data", "targets")
        }

    def no_cache() -> dict:
        raise BenchError(f"no current trainlab cache of {data_dir / 'MNIST'}; run trainlab on it once")

    def read_all(load: Callable[[], dict]) -> None:
        for value in load().values():
            if isinstance(value, torch.Tensor):
                value.clone()  # a copy reads every byte

    times = {
        "decode": lambda: read_all(decode),
        "cache": lambda: read_all(lambda: datacache.load_or_decode(data_dir / "MNIST", no_cache)),
    }
    return {name: min(_timed(fn) for _ in range(3)) for name, fn in times.items()}


# -- the report ----------------------------------------------------------------------------------------
@dataclass
class Measure:
    epoch_s: float
    val_acc: float


def best(measures: list[Measure]) -> float:
    """The fastest epoch time over the rounds: other jobs on the machine only ever add time."""
    return min(m.epoch_s for m in measures)


def step_breakdown(setup: Setup, steps: int = 20) -> dict[str, float]:
    """Milliseconds per training step of trainlab's parts, each timed alone on batches of the real data:
    forward + backward, the configured optimizer's step (fused Adam), and the batch gather."""
    model, data = setup.new_model(), setup.data
    optimizer = instantiate(setup.cfg.optimizer)(model.parameters())
    indices = torch.randperm(len(data.y_train))[: steps * BATCH_SIZE].split(BATCH_SIZE)
    batches = [(data.x_train[index], data.y_train[index]) for index in indices]

    def forward_backward():
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()

    def optimizer_steps():
        for _ in batches:
            optimizer.step()

    def gathers():
        for index in indices:
            data.x_train[index], data.y_train[index]

    forward_backward()  # warm-up, and gradients for the optimizer
    parts = {"forward_backward": forward_backward, "optimizer": optimizer_steps, "gather": gathers}
    return {name: 1e3 * min(_timed(fn) for _ in range(3)) / len(batches) for name, fn in parts.items()}


def model_section(
    name: str, setup: Setup, runs: dict[str, list[Measure]], parts: dict[str, float], peak: float
) -> list[str]:
    counted, estimate = setup.flops_per_epoch()
    params = sum(p.numel() for p in setup.new_model().parameters())
    by_estimate = f", {estimate / 1e9:.1f} by 6·params·samples" if estimate else ""
    lines = [
        f"### {name.upper()} ({params:,} parameters): {setup.n_train:,} training images per epoch, "
        f"{counted / 1e9:.1f} GFLOP per epoch counted{by_estimate}",
        "",
        "| variant | epoch (s) | vs (b) | vs (b) in each round | val acc | GFLOP/s | of peak, counted | of peak, 6·P·N |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for variant, measures in runs.items():
        epoch_s, rate = best(measures), counted / best(measures) / 1e9
        per_round = ", ".join(f"{a.epoch_s / b.epoch_s:.2f}" for a, b in zip(measures, runs["plain"], strict=True))
        estimated = f"{100 * estimate / epoch_s / 1e9 / peak:.0f}%" if estimate else "n/a"
        lines.append(
            f"| {VARIANTS[variant]} | {epoch_s:.3f} | {epoch_s / best(runs['plain']):.2f}x | {per_round} | "
            f"{measures[-1].val_acc:.4f} | {rate:.1f} | {100 * rate / peak:.0f}% | {estimated} |"
        )
    lines += [
        "",
        f"trainlab's parts per step, timed alone (best of the rounds): forward + backward {parts['forward_backward']:.2f} ms "
        f"({100 * setup.flops()[0] / parts['forward_backward'] / 1e6 / peak:.0f}% of peak), optimizer step "
        f"{parts['optimizer']:.2f} ms, batch gather {parts['gather']:.2f} ms.",
        "",
    ]
    return lines + targets(name, runs, estimate or counted, peak) + [""]


def targets(name: str, runs: dict[str, list[Measure]], flops: float, peak: float) -> list[str]:
    """The issue's speed targets, met or not; they are trainlab's, so none without its variant."""
    if "trainlab" not in runs:
        return []
    trainlab = best(runs["trainlab"])
    ratio = trainlab / best(runs["plain"])
    checks = [(f"trainlab <= 1.05x the plain loop (b): {ratio:.2f}x", ratio <= 1.05)]
    if "textbook" in runs:
        speedup = best(runs["textbook"]) / trainlab
        checks.append((f"trainlab >= 3x faster than the textbook loop (c): {speedup:.1f}x", speedup >= 3))
    if "lightning" in runs:
        speedup = best(runs["lightning"]) / trainlab
        checks.append((f"trainlab faster than Lightning (d): {speedup:.2f}x", speedup > 1))
    if name == "mlp":
        fraction = 100 * flops / trainlab / 1e9 / peak
        checks.append((f"MLP epoch at >= 60% of the FLOP limit (6·P·N): {fraction:.0f}%", fraction >= 60))
    return [f"- {'met' if ok else 'NOT met'}: {text}" for text, ok in checks]


def startup_section(data_dir: Path, threads: int | None) -> list[str]:
    startup = startup_times(data_dir, threads)
    cache = decode_and_cache_times(data_dir)
    return [
        "### Start-up: `python train.py dataset=mnist ...` (MLP, data cached; best of 3)",
        "",
        "| from process start to | s |",
        "| --- | ---: |",
        f"| torch imported (`python -c 'import torch'`, for reference) | {startup['import_torch']:.2f} |",
        f"| torchmetrics imported (`python -c 'import torchmetrics'`) | {startup['import_torchmetrics']:.2f} |",
        f"| data and model built (log line `model MLP ...`) | {startup['built']:.2f} |",
        f"| first step done (log line `epoch 1/1` of a one-batch run) | {startup['first_step']:.2f} |",
        "",
        f"Decoding MNIST with torchvision's reader takes {cache['decode']:.2f} s (the first run only); reading "
        f"trainlab's cache of it {cache['cache']:.2f} s.",
        "",
    ]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/train_speed.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets", help="holds MNIST/raw/"
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is warm-up (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--cnn-batches", type=int, default=100, help="training batches per CNN epoch (default 100; 0: all 540)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up timing")
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/train_speed.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        report = bench(args, command)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


def bench(args: argparse.Namespace, command: str) -> str:
    """Run every round and return the report as Markdown."""
    data_dir = args.data_dir.resolve()
    if not (data_dir / "MNIST" / "raw").is_dir():
        raise BenchError(f"no MNIST files under {data_dir} (expected {data_dir}/MNIST/raw/); pass --data-dir")
    if args.epochs < 2:
        raise BenchError("need at least 2 epochs for a steady-state epoch time; pass --epochs 2 or more")
    if 0 < args.cnn_batches < 24:
        raise BenchError("--cnn-batches must be 0 (all) or at least 24, so that the validation stays whole")
    variants = ["plain"] + [v for v in args.variants if v != "plain"]  # (b) is the reference of every ratio
    if "lightning" in variants and importlib.util.find_spec("lightning") is None:
        variants.remove("lightning")
        print('skipping (d): Lightning is not installed (pip install -e ".[bench]")', file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="lightning")
    load_before = load_average()

    workdir = Path(tempfile.mkdtemp(prefix="trainlab-bench-"))
    setups = {}
    for name in args.models:
        batches = (args.cnn_batches or None) if name == "cnn" else None
        cfg = compose_config(name, data_dir, args.epochs, batches, args.threads)
        setups[name] = Setup(cfg, build_data(cfg), args.epochs, batches, workdir)
    runs: dict[str, dict[str, list[Measure]]] = {name: defaultdict(list) for name in setups}
    parts: dict[str, list[dict[str, float]]] = defaultdict(list)
    peaks = []
    for round_ in range(args.repeats):
        peaks.append(matmul_peak())
        for name, setup in setups.items():
            parts[name].append(step_breakdown(setup))
            chosen = [v for v in variants if v != "trainlab_cl" or name == "cnn"]
            for variant in chosen[round_ % len(chosen) :] + chosen[: round_ % len(chosen)]:
                clock = Clock()
                val_acc = RUNNERS[variant](setup, clock)
                runs[name][variant].append(Measure(clock.epoch_s, val_acc))
                print(f"round {round_ + 1} {name} {variant}: {clock.epoch_s:.3f} s/epoch", file=sys.stderr)
    peak = max(peaks)

    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {datetime.now():%Y-%m-%d %H:%M}: {machine()}; "
        f"load average {load_before} before, {load_average()} after (1/5/15 min).",
        "",
        f"fp32 matrix-product peak: {peak:.0f} GFLOP/s (the best of each round: "
        f"{', '.join(f'{p:.0f}' for p in peaks)}). {args.epochs} epochs per run, {args.repeats} rounds; epoch times "
        "are the best of the rounds, and the column `vs (b) in each round` shows how much they vary.",
        "",
        *__doc__[__doc__.index("Every variant") :].strip().splitlines(),
        "",
    ]
    for name, setup in setups.items():
        best_parts = {part: min(p[part] for p in parts[name]) for part in parts[name][0]}
        lines += model_section(
            name, setup, {v: runs[name][v] for v in variants if runs[name][v]}, best_parts, peak
        )
    if not args.no_startup:
        lines += startup_section(data_dir, args.threads)
    return "\n".join([*lines, NOTES])


if __name__ == "__main__":
    sys.exit(main())
