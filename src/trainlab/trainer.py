"""The training loop: train, validate, log, checkpoint every epoch; test once with the best checkpoint.

Read ``fit`` top to bottom: it is the whole loop. Everything it is configured with comes from
``conf/trainer/*.yaml``; the monitored metric (``monitor``/``monitor_mode``) is named there once and drives
the best checkpoint, early stopping and ReduceLROnPlateau alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from trainlab import checkpoint, distributed
from trainlab.callbacks import Callback
from trainlab.dataloader import TensorData
from trainlab.errors import ConfigError, TrainingError
from trainlab.progress import Progress, format_metrics, print_summary
from trainlab.tasks import DeferredMetrics, Task

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived: ``last.ckpt`` (at ``ckpt_path``) was written and the run stopped cleanly."""

    def __init__(self, message: str, signum: int, ckpt_path: Path):
        super().__init__(message)
        self.exit_code = 128 + signum
        self.ckpt_path = ckpt_path


def pick_device(device: str) -> torch.device:
    """``auto``: CUDA, then Apple's MPS, then the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    task: Task,
    prefix: str,
    device: torch.device,
    autocast=contextlib.nullcontext,
) -> dict[str, float]:
    """Metrics of ``model`` over all ``batches``, accumulated batch by batch (never averaged per batch),
    keyed ``<prefix>/<name>``; empty if there are no batches."""
    model.eval()
    metrics = task.metrics(prefix).to(device)
    seen = 0
    for x, y in batches:
        with autocast():
            outputs = model(x)
            loss = task.loss(outputs, y)
        task.update(metrics, outputs, y, loss)
        seen += 1
    return {name: float(value) for name, value in metrics.compute().items()} if seen else {}


def _check_strategy(strategy: str) -> bool:
    """Whether to run DDP. A launch that does not fit the strategy is refused, rather than run as N copies."""
    if strategy not in ("auto", "ddp"):
        raise ConfigError(f"trainer.strategy must be auto or ddp, got {strategy!r}")
    if strategy == "ddp" and not distributed.is_distributed():
        raise ConfigError(
            "trainer.strategy=ddp needs one process per device, started by torchrun: "
            "torchrun --nproc_per_node=2 train.py trainer.strategy=ddp ..."
        )
    if strategy == "auto" and distributed.is_distributed():
        raise ConfigError(
            f"started by torchrun with {distributed.world_size()} processes, but trainer.strategy=auto; "
            "add trainer.strategy=ddp"
        )
    return strategy == "ddp"


class _NoWriter:
    """Stands in for TensorBoard's writer on ranks other than 0, which write nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class Trainer:
    """Fits a model on a data set and writes the run: checkpoints, TensorBoard events and metrics.json.

    Args:
        max_epochs: epochs to train for (in total, counting those before a resume).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        monitor: the tag that defines "best", e.g. ``val/acc``; ``monitor_mode`` is ``max`` or ``min``.
        grad_clip: clip the gradients' total norm to this value (0: off).
        label_smoothing: train classifiers on targets mixed with the uniform distribution by this much
            (``train/loss`` includes it; validation and test report the plain cross-entropy).
        accumulate_grad_batches: add up the gradients of this many batches per optimizer step.
        precision: ``32``, ``bf16`` (autocast) or ``16`` (autocast with a gradient scaler, CUDA).
        log_every_n_steps: how often the step loss and lr are read back from the device and logged (and at
            every epoch's last step).
        limit_batches: at most this many batches per split and epoch (for smoke runs); null: all.
        deterministic: make torch choose deterministic algorithms (CPU runs are deterministic anyway).
        num_threads: torch's intra-op threads; null keeps torch's default.
        compile: ``torch.compile`` the model (compiles on the first steps; pays off on long runs and GPUs).
        channels_last: keep images and convolution weights in channels-last memory order.
        progress: show a progress bar per epoch.
        strategy: ``auto`` (one process) or ``ddp`` (DistributedDataParallel, one process per device, launched
            by torchrun: ``dataset.batch_size`` is then the global batch, split among the processes).
        callbacks: named callbacks (``callbacks.early_stopping``...), called after every epoch.
    """

    def __init__(
        self,
        max_epochs: int = 10,
        device: str = "auto",
        monitor: str = "val/acc",
        monitor_mode: str = "max",
        grad_clip: float = 0.0,
        label_smoothing: float = 0.0,
        accumulate_grad_batches: int = 1,
        precision: str | int = 32,
        log_every_n_steps: int = 50,
        limit_batches: int | None = None,
        deterministic: bool = False,
        num_threads: int | None = None,
        compile: bool = False,
        channels_last: bool = False,
        progress: bool = True,
        strategy: str = "auto",
        callbacks: dict[str, Callback] | None = None,
    ):
        if not isinstance(max_epochs, int) or max_epochs < 0:
            raise ConfigError(f"trainer.max_epochs must be an integer >= 0, got {max_epochs}")
        if monitor_mode not in ("min", "max"):
            raise ConfigError(f"trainer.monitor_mode must be min or max, got {monitor_mode!r}")
        if not isinstance(label_smoothing, int | float) or not 0 <= label_smoothing < 1:
            raise ConfigError(f"trainer.label_smoothing must be in [0, 1), got {label_smoothing}")
        if str(precision) not in ("32", "bf16", "16"):
            raise ConfigError(f"trainer.precision must be 32, bf16 or 16, got {precision!r}")
        self.ddp = _check_strategy(strategy)
        self.max_epochs = max_epochs
        self.device = distributed.local_device() if self.ddp and device == "auto" else pick_device(device)
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.grad_clip = grad_clip
        self.label_smoothing = label_smoothing
        self.accumulate = max(1, accumulate_grad_batches)
        self.precision = str(precision)
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.limit_batches = limit_batches
        self.compile, self.channels_last = compile, channels_last
        self.show_progress = progress and distributed.is_main()
        self.callbacks = dict(callbacks or {})
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
            torch.use_deterministic_algorithms(True, warn_only=True)
        if num_threads:
            torch.set_num_threads(num_threads)

        self.epoch = 0  # completed epochs
        self.batch_in_epoch = 0  # batches done in the current epoch, for a mid-epoch resume
        self.global_step = 0  # optimizer steps
        self.best_score: float | None = None
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}  # the validation metrics of the best epoch
        self.should_stop = False
        self.train_metrics = None  # the current epoch's, saved with a mid-epoch checkpoint
        self._resumed_train_metrics: dict | None = None
        self._signal: int | None = None
        self._stepped = False  # whether the last batch ended with an optimizer step

    # -- the monitor ---------------------------------------------------------------------------------
    def is_improvement(self, value: float, best: float | None, min_delta: float = 0.0) -> bool:
        if best is None:
            return True
        return value > best + min_delta if self.monitor_mode == "max" else value < best - min_delta

    # -- the loop ------------------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        data: TensorData,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        run_dir: str | Path = ".",
        config_yaml: str = "",
        hparams: dict[str, Any] | None = None,
        ckpt_path: str | Path | None = None,
    ) -> dict[str, float]:
        """Train, validate and checkpoint every epoch, then test the best model; returns metrics.json."""
        from torch.utils.tensorboard import SummaryWriter

        self.model, self.optimizer = self._prepare(model), optimizer
        self.data = data.to(self.device, channels_last=self.channels_last)
        self.train_model = self.model  # what the training step runs: under DDP, the wrapped model
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            data.distribute(distributed.rank(), distributed.world_size())
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
        self.scheduler, self.scheduler_interval = scheduler, scheduler_interval
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config_yaml = config_yaml
        self.task = data.task
        autocast_dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(self.precision)
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=autocast_dtype))
            if autocast_dtype
            else contextlib.nullcontext
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "16")
        if ckpt_path:
            self._restore(ckpt_path)

        start = time.perf_counter()
        self.writer = (
            SummaryWriter(self.run_dir / "tensorboard", purge_step=self.global_step or None)
            if distributed.is_main()
            else _NoWriter()
        )
        previous_handlers = self._catch_signals()
        try:
            for callback in self.callbacks.values():
                callback.on_fit_start(self)
            while self.epoch < self.max_epochs and not self.should_stop:
                if self._signal_received():  # arrived during validation or checkpointing
                    self._save_interrupted()
                train_metrics = self._train_epoch()
                val_metrics = self.evaluate("val")
                epoch_metrics = {**train_metrics, **val_metrics}
                self._step_scheduler_on_epoch(epoch_metrics)
                self.epoch += 1
                self.batch_in_epoch = 0
                self._log_scalars(epoch_metrics | {"epoch": self.epoch})
                log.info("epoch %d/%d: %s", self.epoch, self.max_epochs, format_metrics(epoch_metrics))
                for callback in self.callbacks.values():  # before the checkpoint, which saves their state
                    callback.on_epoch_end(self, epoch_metrics)
                self.should_stop = distributed.from_main(self.should_stop)  # decided once, on rank 0
                self._checkpoint(epoch_metrics)
            results = self._test()
            results["wall_time_s"] = round(time.perf_counter() - start, 3)
            if distributed.is_main():
                self._write_results(results, hparams or {})
                print_summary(results, self.run_dir)
            return results
        finally:
            self._restore_signals(previous_handlers)
            self.writer.close()

    def _train_epoch(self) -> dict[str, float]:
        self.model.train()
        metrics = self.train_metrics = DeferredMetrics(self.task, "train").to(self.device)
        if self._resumed_train_metrics:  # the batches before a mid-epoch resume count too
            metrics.load_state_dict(self._resumed_train_metrics)
            self._resumed_train_metrics = None
        total = self._limit(self.data.num_batches("train"))
        batches = self.data.train_batches(self.epoch, start=self.batch_in_epoch)
        with Progress(f"epoch {self.epoch + 1}/{self.max_epochs}", total, self.show_progress) as bar:
            bar.advance(self.batch_in_epoch)
            for x, y in self._limited(batches, total - self.batch_in_epoch):
                lr = self.lr  # the rate this step trains with; a per-step scheduler moves it within the step
                last = self.batch_in_epoch + 1 == total
                loss = self._train_step(x, y, metrics, last)
                self.batch_in_epoch += 1
                # every n steps, and at an epoch's last step: a short run still draws its lr schedule
                if self._stepped and (self.global_step % self.log_every_n_steps == 0 or last):
                    loss_value = self._check_finite(loss)
                    self._log_scalars({"train/loss_step": loss_value, "lr": lr})
                    bar.set_loss(loss_value)
                bar.advance()
                if self._stepped and not last and self._signal_received(at_step=True):
                    self._check_finite(loss)  # never replace the last good checkpoint with a diverged one
                    self._save_interrupted()
        return self._compute(metrics)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, metrics: DeferredMetrics, last: bool) -> torch.Tensor:
        """Forward and backward on one batch; an optimizer step every ``accumulate`` batches and after the
        epoch's ``last`` one."""
        with self.autocast():
            outputs = self.train_model(x)
            loss = self.task.loss(outputs, y, self.label_smoothing)
        self.scaler.scale(loss * self._loss_weight(len(y))).backward()
        metrics.update(outputs, y, loss)
        self._stepped = (self.batch_in_epoch + 1) % self.accumulate == 0 or last
        if self._stepped:
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_step += 1
            if self.scheduler is not None and self.scheduler_interval == "step":
                self.scheduler.step()
        return loss.detach()

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics over the whole ``val`` or ``test`` split."""
        batches = self._limited(self.data.batches(split), self._limit(self.data.num_batches(split)))
        return evaluate(self.model, batches, self.task, split, self.device, self.autocast)

    def _prepare(self, model: nn.Module) -> nn.Module:
        """The model on the device, in channels-last memory order and compiled where configured."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile()  # in place, so the state dict keeps its keys (no "_orig_mod." prefix)
        return model

    # -- pieces of the loop --------------------------------------------------------------------------
    def _loss_weight(self, n: int) -> float:
        """The factor on a batch's mean loss before backward: 1 / accumulate; and under DDP, which averages
        the ranks' gradients, this rank's share of the global batch times the ranks, so that the gradient is
        the global batch's mean whatever its split (equal to a single process's)."""
        if not self.ddp:
            return 1 / self.accumulate
        batch_size = self.data.batch_size
        global_n = min(batch_size, self.data.num_samples("train") - self.batch_in_epoch * batch_size)
        return n * self.data.world / global_n / self.accumulate

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def steps_per_epoch(self, data: TensorData) -> int:
        """Optimizer steps in one epoch of ``data`` (what per-step schedulers count in)."""
        return math.ceil(self._limit(data.num_batches("train")) / self.accumulate)

    def _limit(self, n: int) -> int:
        return min(n, self.limit_batches) if self.limit_batches else n

    @staticmethod
    def _limited(batches: Iterable, n: int) -> Iterable:
        for i, batch in enumerate(batches):
            if i >= n:
                return
            yield batch

    def _compute(self, metrics: DeferredMetrics) -> dict[str, float]:
        values = {name: float(value) for name, value in metrics.compute().items()}
        self._check_finite(values.get("train/loss", 0.0))
        return values

    def _check_finite(self, loss: torch.Tensor | float) -> float:
        value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if not math.isfinite(value):
            last = self.ckpt_dir / "last.ckpt"
            kept = f"the last good checkpoint {last} is kept" if last.is_file() else "no checkpoint was written"
            raise TrainingError(
                f"the training loss became {value} at epoch {self.epoch + 1}, step {self.global_step}; {kept}. "
                "Lower optimizer.lr, or set trainer.grad_clip"
            )
        return value

    def _step_scheduler_on_epoch(self, metrics: dict[str, float]) -> None:
        if self.scheduler is None or self.scheduler_interval != "epoch":
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(self._monitored(metrics))
        else:
            self.scheduler.step()

    def _monitored(self, metrics: dict[str, float]) -> float:
        if self.monitor not in metrics:
            raise TrainingError(
                f"trainer.monitor={self.monitor} is not a logged metric; choose one of {', '.join(sorted(metrics))}"
            )
        return metrics[self.monitor]

    def _log_scalars(self, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, self.global_step)

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "train_metrics": (
                self.train_metrics.state_dict()
                if self.train_metrics is not None and self.batch_in_epoch
                else self._resumed_train_metrics
            ),
            "monitor": self.monitor,
            "callbacks": {name: cb.state_dict() for name, cb in self.callbacks.items()},
            "input_spec": self.data.input_spec().to_dict(),
            "rng": checkpoint.rng_states(),
            "config": self.config_yaml,
        }

    def _checkpoint(self, metrics: dict[str, float]) -> None:
        score = self._monitored(metrics)
        improved = self.is_improvement(score, self.best_score)
        if improved:
            self.best_score, self.best_epoch = score, self.epoch
            self.best_metrics = {k: v for k, v in metrics.items() if k.startswith("val/")}
        if distributed.is_main():
            state = self.state_dict()
            checkpoint.save(state, self.ckpt_dir / "last.ckpt")
            if improved:
                checkpoint.save(state, self.ckpt_dir / "best.ckpt")

    def _restore(self, ckpt_path: str | Path) -> None:
        state = checkpoint.load(ckpt_path, map_location=self.device)
        checkpoint.load_weights(self.model, state, ckpt_path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.global_step = state["global_step"]
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.best_metrics = state["best_metrics"]
        self._resumed_train_metrics = state["train_metrics"]
        self._carry_best_checkpoint(Path(ckpt_path).with_name("best.ckpt"))
        for name, callback in self.callbacks.items():
            if name in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][name])
        checkpoint.set_rng_states(state["rng"])
        log.info("resumed from %s at epoch %d, step %d", ckpt_path, self.epoch, self.global_step)

    def _carry_best_checkpoint(self, previous_best: Path) -> None:
        """Copy the resumed run's ``best.ckpt`` into this run, so that the test uses the best epoch even if
        it came before the resume."""
        best = self.ckpt_dir / "best.ckpt"
        if not self.best_epoch or previous_best.resolve() == best.resolve() or not distributed.is_main():
            return
        state = checkpoint.load(previous_best) if previous_best.is_file() else {}
        if state.get("epoch") != self.best_epoch:
            log.warning(
                "%s is missing or not from the best epoch (%d): the test will use the best checkpoint "
                "written after resuming, or the final weights",
                previous_best,
                self.best_epoch,
            )
            return
        checkpoint.save(state, best)

    # -- preemption ----------------------------------------------------------------------------------
    def _catch_signals(self) -> dict:
        """SIGTERM/SIGINT finish the current step, then ``last.ckpt`` is written; a second one aborts."""

        def handler(signum, frame):
            if self._signal is not None:
                raise KeyboardInterrupt
            self._signal = signum
            log.warning("%s received: finishing this step and saving last.ckpt", signal.Signals(signum).name)

        previous = {}
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, handler)
        return previous

    @staticmethod
    def _restore_signals(previous: dict) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _signal_received(self, at_step: bool = False) -> bool:
        """Whether to stop for SIGTERM/SIGINT now. Under DDP all ranks must stop at the same step, so they
        agree through a collective: at every epoch's start, and inside one every ``log_every_n_steps``."""
        if not self.ddp:
            return self._signal is not None
        if at_step and self.global_step % self.log_every_n_steps:
            return False
        if distributed.any_rank(self._signal is not None):
            self._signal = self._signal or signal.SIGTERM  # another rank got it
            return True
        return False

    def _save_interrupted(self) -> None:
        path = self.ckpt_dir / "last.ckpt"
        if distributed.is_main():
            checkpoint.save(self.state_dict(), path)
        name = signal.Signals(self._signal).name
        raise Interrupted(
            f"stopped by {name} at epoch {self.epoch + 1}, step {self.global_step}; saved {path}",
            self._signal,
            path,
        )

    # -- the end -------------------------------------------------------------------------------------
    def _test(self) -> dict[str, Any]:
        best = self.ckpt_dir / "best.ckpt"
        weights = checkpoint.load(best)["model"] if distributed.is_main() and best.exists() else None
        weights = distributed.from_main_object(weights)  # rank 0's files are rank 0's alone
        if weights is not None:
            self.model.load_state_dict(weights)
        test_metrics = self.evaluate("test")
        self._log_scalars(test_metrics)
        for callback in self.callbacks.values():
            callback.on_test_end(self)
        return {
            **test_metrics,
            **self.best_metrics,
            "best_epoch": self.best_epoch,
            "monitor": self.monitor,
            "best_score": self.best_score,
            "epochs": self.epoch,
            "global_step": self.global_step,
        }

    def _write_results(self, results: dict[str, Any], hparams: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        metric_values = {k: v for k, v in results.items() if isinstance(v, float | int) and "/" in k}
        for summary in hparams_summary(hparams, metric_values):
            self.writer.file_writer.add_summary(summary)
        (self.run_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
