"""The training loop: train, validate, log, checkpoint every epoch; test once with the best checkpoint.

Read ``fit`` top to bottom: it is the whole loop. The Trainer holds its settings (``conf/trainer/*.yaml``,
the only place they are written down); what one fit needs is made in ``fit`` and passed along. The pieces
the loop calls live in the modules of their names: the saved and restored state (``state``), checkpoint
files and the checkpoint policy (``checkpoint``), preemption (``preemption``), the divergence check
(``divergence``), the loggers (``loggers``) and ``metrics.json`` (``outputs``), devices, precision and model
preparation (``devices``), DDP (``distributed``), and the monitored metric (``monitor``), which drives the
best checkpoint, early stopping and ReduceLROnPlateau alike.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from trainlab import checkpoint, devices, distributed, outputs
from trainlab.callbacks import Callback, FitContext, TestOutputs
from trainlab.dataloader import BatchedData
from trainlab.dataloader.base import Inputs, call
from trainlab.divergence import check_finite
from trainlab.errors import ConfigError
from trainlab.loggers import Logger, Loggers, RunInfo
from trainlab.monitor import Monitor
from trainlab.preemption import Preemption
from trainlab.progress import Progress, format_metrics, print_summary
from trainlab.state import TrainingState
from trainlab.tasks import DeferredMetrics, Task

log = logging.getLogger(__name__)

BatchHook = Callable[[Inputs, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    task: Task,
    prefix: str,
    device: torch.device,
    autocast: devices.Autocast = contextlib.nullcontext,
    on_batch: BatchHook | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` over all ``batches``, accumulated batch by batch (never averaged per batch),
    keyed ``<prefix>/<name>``; empty if there are no batches. ``on_batch(x, y, outputs)`` sees each batch."""
    model.eval()
    metrics = task.metrics(prefix).to(device)
    seen = 0
    for x, y in batches:
        with autocast():
            outputs = call(model, x)
        outputs = outputs.float()  # losses and metrics in fp32, whatever the precision of the forward pass
        task.update(metrics, outputs, y, task.loss(outputs, y))
        if on_batch is not None:
            on_batch(x, y, outputs)
        seen += 1
    return {name: float(value) for name, value in metrics.compute().items()} if seen else {}


class Trainer:
    """Fits a model on a data set and writes the run: checkpoints, the loggers' records and metrics.json.

    Every argument is a setting of ``conf/trainer/default.yaml``, which documents them and holds their
    defaults. ``callbacks`` are the named callbacks of ``conf/callbacks/``, ``loggers`` the named loggers of
    ``conf/logger/``.
    """

    def __init__(
        self,
        *,
        max_epochs: int,
        device: str,
        monitor: str,
        monitor_mode: str,
        grad_clip: float,
        label_smoothing: float,
        accumulate_grad_batches: int,
        precision: str | int,
        log_every_n_steps: int,
        limit_batches: int | None,
        deterministic: bool,
        num_threads: int | None,
        compile: bool,
        channels_last: bool | str,
        progress: bool,
        strategy: str,
        callbacks: dict[str, Callback] | None = None,
        loggers: dict[str, Logger] | None = None,
    ):
        if not isinstance(max_epochs, int) or max_epochs < 0:
            raise ConfigError(f"trainer.max_epochs must be an integer >= 0, got {max_epochs}")
        if channels_last not in (True, False, "auto"):
            raise ConfigError(f"trainer.channels_last must be auto, true or false, got {channels_last!r}")
        if not isinstance(label_smoothing, int | float) or not 0 <= label_smoothing < 1:
            raise ConfigError(f"trainer.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.max_epochs = max_epochs
        self.monitor = Monitor(monitor, monitor_mode)
        self.ddp = distributed.use_ddp(strategy)
        self.device = distributed.local_device() if self.ddp and device == "auto" else devices.pick_device(device)
        self.precision = devices.check_precision(precision)  # auto: resolved by fit, for its model
        self.autocast: devices.Autocast = contextlib.nullcontext  # the forward passes' context, set by fit
        self.grad_clip = grad_clip
        self.label_smoothing = label_smoothing
        self.accumulate = max(1, accumulate_grad_batches)
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.limit_batches = limit_batches
        self.deterministic, self.num_threads = deterministic, num_threads
        self.compile, self.channels_last = compile, channels_last
        self.show_progress = progress and distributed.is_main()
        self.callbacks = dict(callbacks or {})
        self.loggers = dict(loggers or {})

    def steps_per_epoch(self, data: BatchedData) -> int:
        """Optimizer steps in one epoch of ``data`` (what per-step schedulers count in)."""
        return math.ceil(self._limit(data.num_batches("train")) / self.accumulate)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        data: BatchedData,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        run_dir: str | Path = ".",
        config_yaml: str = "",
        hparams: dict[str, Any] | None = None,
        ckpt_path: str | Path | None = None,
    ) -> dict[str, float]:
        """Train, validate and checkpoint every epoch, then test the best model; returns metrics.json."""
        run_dir = Path(run_dir)
        devices.configure_torch(self.num_threads, self.deterministic)
        precision = devices.resolve_precision(self.precision, self.device, model)
        self.autocast = devices.autocast(precision, self.device)
        channels_last = devices.use_channels_last(self.channels_last, model, self.device)
        model = devices.prepare_model(model, self.device, channels_last, self.compile)
        data.to(self.device, channels_last=channels_last)
        train_model = model  # what the training step runs: under DDP, the wrapped model
        if self.ddp:
            data.distribute(distributed.rank(), distributed.world_size())
            train_model = distributed.wrap(model, self.device)
        state = TrainingState(
            model,
            optimizer,
            scheduler,
            scheduler_interval,
            torch.amp.GradScaler(self.device.type, enabled=precision == "16"),
            self.callbacks,
            data.input_spec().to_dict(),
            config_yaml,
            self.monitor.name,
        )
        checkpoints = checkpoint.RunCheckpoints(run_dir, self.monitor)
        if ckpt_path:
            checkpoints.restore(state, Path(ckpt_path), self.device)
        loop = state.loop

        start = time.perf_counter()
        loggers = Loggers(self.loggers.values() if distributed.is_main() else ())  # rank 0 records
        loggers.start(RunInfo(run_dir, hparams or {}, data.task.metric_names, loop.global_step, config_yaml))
        outputs.write_reports(run_dir, data.reports(), loggers, loop.global_step)
        context = FitContext(model, data, self.monitor, loggers, run_dir, self.autocast, loop)
        results = None
        try:
            with Preemption(self.ddp, self.log_every_n_steps) as preemption:
                for callback in self.callbacks.values():
                    callback.on_fit_start(context)
                while loop.epoch < self.max_epochs and not context.stop_requested:
                    if preemption.requested(loop.global_step):  # arrived in validation or checkpointing
                        preemption.stop(state, checkpoints)
                    train_metrics = self._train_epoch(state, train_model, data, context, preemption, checkpoints)
                    val_metrics = self.evaluate(model, data, "val")
                    epoch_metrics = {**train_metrics, **val_metrics}
                    self._step_scheduler_on_epoch(state, epoch_metrics)
                    loop.epoch += 1
                    loop.batch_in_epoch = 0
                    loggers.log_epoch(epoch_metrics, loop.epoch, loop.global_step)
                    log.info("epoch %d/%d: %s", loop.epoch, self.max_epochs, format_metrics(epoch_metrics))
                    for callback in self.callbacks.values():  # before the checkpoint, which saves their state
                        callback.on_epoch_end(context, epoch_metrics)
                    context.stop_requested = distributed.from_main(context.stop_requested)  # rank 0 decides
                    checkpoints.save_epoch(state, epoch_metrics)
                # a signal from here on lets the run finish, then stops the process's next run (preemption)
                finished = self._test(model, data, checkpoints, context)
                finished["wall_time_s"] = round(time.perf_counter() - start, 3)
                outputs.write_metrics(run_dir, finished)
                results = finished
                for callback in self.callbacks.values():
                    callback.on_fit_end(context, results)
        finally:
            loggers.finish(results)
        if distributed.is_main():
            print_summary(results, run_dir)
        return results

    def _train_epoch(
        self,
        state: TrainingState,
        train_model: nn.Module,
        data: BatchedData,
        context: FitContext,
        preemption: Preemption,
        checkpoints: checkpoint.RunCheckpoints,
    ) -> dict[str, float]:
        loop = state.loop
        state.model.train()
        metrics = DeferredMetrics(data.task, "train", self.label_smoothing).to(self.device)
        metrics = state.epoch_train_metrics(metrics)
        total = self._limit(data.num_batches("train"))
        batches = data.train_batches(loop.epoch, start=loop.batch_in_epoch)
        batch_callbacks = [c for c in self.callbacks.values() if overrides(c, "on_train_batch_end")]
        with Progress(f"epoch {loop.epoch + 1}/{self.max_epochs}", total, self.show_progress) as bar:
            bar.advance(loop.batch_in_epoch)
            for x, y in itertools.islice(batches, total - loop.batch_in_epoch):
                lr = state.optimizer.param_groups[0]["lr"]  # this step's; a per-step scheduler moves it
                last = loop.batch_in_epoch + 1 == total
                stepped = (loop.batch_in_epoch + 1) % self.accumulate == 0 or last
                outputs = self._train_step(state, train_model, data, x, y, stepped)
                metrics.update(outputs, y)
                loop.batch_in_epoch += 1
                # the loss's value only where it is read: callbacks that take it, the logged steps
                loss = self._loss(data, outputs, y) if batch_callbacks else None
                for callback in batch_callbacks:
                    callback.on_train_batch_end(context, loss)
                # every n steps, and at an epoch's last step: a short run still draws its lr schedule
                if stepped and (loop.global_step % self.log_every_n_steps == 0 or last):
                    loss = self._loss(data, outputs, y) if loss is None else loss
                    loss_value = check_finite(loss, loop, checkpoints.last)
                    context.logger.log_metrics({"train/loss_step": loss_value, "lr": lr}, loop.global_step)
                    bar.set_loss(loss_value)
                bar.advance()
                if stepped and not last and preemption.requested(loop.global_step, at_step=True):
                    # never replace a good checkpoint with a diverged one
                    check_finite(self._loss(data, outputs, y) if loss is None else loss, loop, checkpoints.last)
                    preemption.stop(state, checkpoints)
        values = {name: float(value) for name, value in metrics.compute().items()}
        check_finite(values.get("train/loss", 0.0), loop, checkpoints.last)
        return values

    def _train_step(
        self,
        state: TrainingState,
        train_model: nn.Module,
        data: BatchedData,
        x: Inputs,
        y: torch.Tensor,
        stepped: bool,
    ) -> torch.Tensor:
        """Forward and backward on one batch, then, if ``stepped``, an optimizer step; returns the outputs,
        detached. Backward starts from the loss's gradient with respect to the outputs
        (``Task.loss_gradient``), scaled by the batch's weight: no loss value, and label smoothing free. Under
        DDP, a batch that only accumulates gradients keeps them to itself (``no_sync``): the ranks average
        them once, in the backward pass of the batch that steps."""
        sync = contextlib.nullcontext() if stepped or not self.ddp else train_model.no_sync()
        with sync:
            with self.autocast():
                outputs = call(train_model, x)
            weight = self._loss_weight(data, y.shape[0], state.loop.batch_in_epoch)
            gradient = data.task.loss_gradient(outputs, y, self.label_smoothing, weight)
            outputs.backward(state.scaler.scale(gradient))
        if stepped:
            if self.grad_clip:
                state.scaler.unscale_(state.optimizer)
                nn.utils.clip_grad_norm_(state.model.parameters(), self.grad_clip)
            state.scaler.step(state.optimizer)
            state.scaler.update()
            state.optimizer.zero_grad(set_to_none=True)
            state.loop.global_step += 1
            if state.scheduler is not None and state.scheduler_interval == "step":
                state.scheduler.step()
        return outputs.detach()

    def _loss(self, data: BatchedData, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A training batch's loss (label smoothing included), in fp32, from its (detached) outputs."""
        return data.task.loss(outputs.float(), y, self.label_smoothing)

    def evaluate(
        self,
        model: nn.Module,
        data: BatchedData,
        split: str,
        on_batch: BatchHook | None = None,
        autocast: devices.Autocast | None = None,
    ):
        """Metrics over the whole ``val`` or ``test`` split (at most ``limit_batches`` batches), in the
        training's precision unless ``autocast`` says otherwise."""
        batches = itertools.islice(data.batches(split), self._limit(data.num_batches(split)))
        return evaluate(model, batches, data.task, split, self.device, autocast or self.autocast, on_batch)

    # -- pieces of the loop --------------------------------------------------------------------------
    def _loss_weight(self, data: BatchedData, n: int, batch_in_epoch: int) -> float:
        """The factor on a batch's mean loss before backward: 1 / accumulate, and under DDP this rank's share
        of the global batch (``distributed.batch_share``)."""
        if not self.ddp:
            return 1 / self.accumulate
        start = batch_in_epoch * data.batch_size
        return distributed.batch_share(n, data.batch_size, start, data.num_samples("train")) / self.accumulate

    def _limit(self, n: int) -> int:
        return min(n, self.limit_batches) if self.limit_batches else n

    def _step_scheduler_on_epoch(self, state: TrainingState, metrics: dict[str, float]) -> None:
        scheduler = state.scheduler
        if scheduler is None or state.scheduler_interval != "epoch":
            return
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(self.monitor.value(metrics))
        else:
            scheduler.step()

    # -- the end -------------------------------------------------------------------------------------
    def _test(
        self, model: nn.Module, data: BatchedData, checkpoints: checkpoint.RunCheckpoints, context: FitContext
    ) -> dict[str, Any]:
        """The test split with the best weights, once (in fp32): its metrics, and its outputs for the callbacks."""
        weights = checkpoints.best_weights()
        if weights is not None:
            model.load_state_dict(weights)
        collected: list[tuple[torch.Tensor, torch.Tensor]] = []

        def on_batch(x: Inputs, y: torch.Tensor, batch_outputs: torch.Tensor) -> None:
            collected.append((batch_outputs.cpu(), y.cpu()))
            for callback in self.callbacks.values():
                callback.on_test_batch_end(context, x, y, batch_outputs)

        # in fp32, whatever the training's precision: the model as predict.py, export and serve run it
        test_metrics = self.evaluate(model, data, "test", on_batch, autocast=contextlib.nullcontext)
        loop = context.loop
        context.logger.log_test(test_metrics, loop.global_step)
        checkpoints.record_test(test_metrics)
        gathered = [pair for rank_pairs in distributed.gather(collected) for pair in rank_pairs]
        if gathered:
            test = TestOutputs(
                torch.cat([o for o, _ in gathered]), torch.cat([t for _, t in gathered]), test_metrics
            )
            for callback in self.callbacks.values():
                callback.on_test_end(context, test)
        return {
            **test_metrics,
            **loop.best_metrics,
            "best_epoch": loop.best_epoch,
            "monitor": self.monitor.name,
            "best_score": loop.best_score,
            "epochs": loop.epoch,
            "global_step": loop.global_step,
        }


def overrides(callback: Callback, hook: str) -> bool:
    """Whether ``callback``'s class implements ``hook`` (the base class's does nothing)."""
    return getattr(type(callback), hook) is not getattr(Callback, hook)
