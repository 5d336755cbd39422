"""The training loop: train, validate, log, checkpoint every epoch; test once with the best checkpoint.

Read ``fit`` top to bottom: it is the whole loop. The Trainer holds its settings (``conf/trainer/*.yaml``,
the only place they are written down); what one fit needs is made in ``fit`` and passed along. The pieces
around the loop live in their own modules: the saved and restored state (``state``), checkpoint files
(``checkpoint``), preemption (``preemption``), TensorBoard and ``metrics.json`` (``outputs``), devices and
precision (``devices``), and the monitored metric (``monitor``), which drives the best checkpoint, early
stopping and ReduceLROnPlateau alike.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from trainlab import checkpoint, devices, distributed
from trainlab.callbacks import Callback, FitContext, TestOutputs
from trainlab.dataloader import BatchedData
from trainlab.errors import ConfigError, TrainingError
from trainlab.monitor import Monitor
from trainlab.outputs import RunOutputs
from trainlab.preemption import Interrupted, SignalCatcher
from trainlab.progress import Progress, format_metrics, print_summary
from trainlab.state import TrainingState
from trainlab.tasks import DeferredMetrics, Task

log = logging.getLogger(__name__)

BatchHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


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
            outputs = model(x)
            loss = task.loss(outputs, y)
        task.update(metrics, outputs, y, loss)
        if on_batch is not None:
            on_batch(x, y, outputs.float())
        seen += 1
    return {name: float(value) for name, value in metrics.compute().items()} if seen else {}


def _first(batches: Iterable, n: int) -> Iterator:
    for i, batch in enumerate(batches):
        if i >= n:
            return
        yield batch


class Trainer:
    """Fits a model on a data set and writes the run: checkpoints, TensorBoard events and metrics.json.

    Every argument is a setting of ``conf/trainer/default.yaml``, which documents them and holds their
    defaults. ``callbacks`` are the named callbacks of ``conf/callbacks/``.
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
        self.precision = devices.check_precision(precision)
        self.autocast = devices.autocast(self.precision, self.device)
        self.grad_clip = grad_clip
        self.label_smoothing = label_smoothing
        self.accumulate = max(1, accumulate_grad_batches)
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.limit_batches = limit_batches
        self.deterministic, self.num_threads = deterministic, num_threads
        self.compile, self.channels_last = compile, channels_last
        self.show_progress = progress and distributed.is_main()
        self.callbacks = dict(callbacks or {})

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
        devices.configure_torch(self.num_threads, self.deterministic)
        channels_last = self._use_channels_last(model)
        model = self._prepare(model, channels_last)
        data.to(self.device, channels_last=channels_last)
        train_model = model  # what the training step runs: under DDP, the wrapped model
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            data.distribute(distributed.rank(), distributed.world_size())
            device_ids = [self.device] if self.device.type == "cuda" else None
            train_model = DistributedDataParallel(model, device_ids=device_ids)
        state = TrainingState(
            model,
            optimizer,
            scheduler,
            scheduler_interval,
            torch.amp.GradScaler(self.device.type, enabled=self.precision == "16"),
            self.callbacks,
            data.input_spec().to_dict(),
            config_yaml,
            self.monitor.name,
        )
        checkpoints = checkpoint.RunCheckpoints(Path(run_dir))
        if ckpt_path:
            self._resume(state, checkpoints, Path(ckpt_path))
        loop = state.loop

        start = time.perf_counter()
        outputs = RunOutputs(Path(run_dir), purge_step=loop.global_step)
        outputs.write_layout(data.task.metric_names)
        context = FitContext(model, data, self.monitor, outputs.writer, Path(run_dir), self.autocast, loop)
        try:
            with SignalCatcher() as signals:
                for callback in self.callbacks.values():
                    callback.on_fit_start(context)
                while loop.epoch < self.max_epochs and not context.stop_requested:
                    if self._stop_for_signal(signals, loop.global_step):  # arrived in validation or checkpointing
                        self._save_interrupted(state, checkpoints, signals)
                    train_metrics = self._train_epoch(state, train_model, data, outputs, signals, checkpoints)
                    val_metrics = self.evaluate(model, data, "val")
                    epoch_metrics = {**train_metrics, **val_metrics}
                    self._step_scheduler_on_epoch(state, epoch_metrics)
                    loop.epoch += 1
                    loop.batch_in_epoch = 0
                    outputs.log_scalars(epoch_metrics, loop.global_step)
                    log.info("epoch %d/%d: %s", loop.epoch, self.max_epochs, format_metrics(epoch_metrics))
                    for callback in self.callbacks.values():  # before the checkpoint, which saves their state
                        callback.on_epoch_end(context, epoch_metrics)
                    context.stop_requested = distributed.from_main(context.stop_requested)  # rank 0 decides
                    self._checkpoint(state, checkpoints, epoch_metrics)
                # a signal from here on lets the run finish, then stops the process's next run (preemption)
                results = self._test(model, data, checkpoints, outputs, context)
                results["wall_time_s"] = round(time.perf_counter() - start, 3)
                outputs.write_results(results, hparams or {})
            if distributed.is_main():
                print_summary(results, Path(run_dir))
            return results
        finally:
            outputs.close()

    def _train_epoch(
        self,
        state: TrainingState,
        train_model: nn.Module,
        data: BatchedData,
        outputs: RunOutputs,
        signals: SignalCatcher,
        checkpoints: checkpoint.RunCheckpoints,
    ) -> dict[str, float]:
        loop = state.loop
        state.model.train()
        metrics = state.epoch_train_metrics(DeferredMetrics(data.task, "train").to(self.device))
        total = self._limit(data.num_batches("train"))
        batches = data.train_batches(loop.epoch, start=loop.batch_in_epoch)
        with Progress(f"epoch {loop.epoch + 1}/{self.max_epochs}", total, self.show_progress) as bar:
            bar.advance(loop.batch_in_epoch)
            for x, y in _first(batches, total - loop.batch_in_epoch):
                lr = state.optimizer.param_groups[0]["lr"]  # this step's; a per-step scheduler moves it
                last = loop.batch_in_epoch + 1 == total
                stepped = (loop.batch_in_epoch + 1) % self.accumulate == 0 or last
                loss = self._train_step(state, train_model, data, x, y, metrics, stepped)
                loop.batch_in_epoch += 1
                # every n steps, and at an epoch's last step: a short run still draws its lr schedule
                if stepped and (loop.global_step % self.log_every_n_steps == 0 or last):
                    loss_value = self._check_finite(loss, loop, checkpoints)
                    outputs.log_scalars({"train/loss_step": loss_value, "lr": lr}, loop.global_step)
                    bar.set_loss(loss_value)
                bar.advance()
                if stepped and not last and self._stop_for_signal(signals, loop.global_step, at_step=True):
                    self._check_finite(
                        loss, loop, checkpoints
                    )  # never replace a good checkpoint with a diverged one
                    self._save_interrupted(state, checkpoints, signals)
        values = {name: float(value) for name, value in metrics.compute().items()}
        self._check_finite(values.get("train/loss", 0.0), loop, checkpoints)
        return values

    def _train_step(
        self,
        state: TrainingState,
        train_model: nn.Module,
        data: BatchedData,
        x: torch.Tensor,
        y: torch.Tensor,
        metrics: DeferredMetrics,
        stepped: bool,
    ) -> torch.Tensor:
        """Forward and backward on one batch, then, if ``stepped``, an optimizer step."""
        with self.autocast():
            outputs = train_model(x)
            loss = data.task.loss(outputs, y, self.label_smoothing)
        weight = self._loss_weight(data, len(y), state.loop.batch_in_epoch)
        # a weight of 1 (no accumulation, one process) adds no multiplication to the graph: ~50 us a step
        state.scaler.scale(loss if weight == 1 else loss * weight).backward()
        metrics.update(outputs, y, loss)
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
        return loss.detach()

    def evaluate(self, model: nn.Module, data: BatchedData, split: str, on_batch: BatchHook | None = None):
        """Metrics over the whole ``val`` or ``test`` split (at most ``limit_batches`` batches)."""
        batches = _first(data.batches(split), self._limit(data.num_batches(split)))
        return evaluate(model, batches, data.task, split, self.device, self.autocast, on_batch)

    def _use_channels_last(self, model: nn.Module) -> bool:
        """``auto``: for convolutional models on the CPU, whose convolutions run 1.3x (training) to 2x
        (evaluation) faster on channels-last images there, with the same results up to float rounding."""
        if self.channels_last != "auto":
            return self.channels_last
        return self.device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())

    def _prepare(self, model: nn.Module, channels_last: bool) -> nn.Module:
        """The model on the device, in channels-last memory order and compiled where configured."""
        model = model.to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile()  # in place, so the state dict keeps its keys (no "_orig_mod." prefix)
        return model

    # -- pieces of the loop --------------------------------------------------------------------------
    def _loss_weight(self, data: BatchedData, n: int, batch_in_epoch: int) -> float:
        """The factor on a batch's mean loss before backward: 1 / accumulate; and under DDP, which averages
        the ranks' gradients, this rank's share of the global batch times the ranks, so that the gradient is
        the global batch's mean whatever its split (equal to a single process's)."""
        if not self.ddp:
            return 1 / self.accumulate
        global_n = min(data.batch_size, data.num_samples("train") - batch_in_epoch * data.batch_size)
        return n * data.world / global_n / self.accumulate

    def _limit(self, n: int) -> int:
        return min(n, self.limit_batches) if self.limit_batches else n

    def _check_finite(self, loss: torch.Tensor | float, loop, checkpoints: checkpoint.RunCheckpoints) -> float:
        value = float(loss)
        if not math.isfinite(value):
            last = checkpoints.last
            kept = f"the last good checkpoint {last} is kept" if last.is_file() else "no checkpoint was written"
            raise TrainingError(
                f"the training loss became {value} at epoch {loop.epoch + 1}, step {loop.global_step}; {kept}. "
                "Lower optimizer.lr, or set trainer.grad_clip"
            )
        return value

    def _step_scheduler_on_epoch(self, state: TrainingState, metrics: dict[str, float]) -> None:
        scheduler = state.scheduler
        if scheduler is None or state.scheduler_interval != "epoch":
            return
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(self.monitor.value(metrics))
        else:
            scheduler.step()

    # -- checkpoints and preemption ------------------------------------------------------------------
    def _checkpoint(self, state: TrainingState, checkpoints: checkpoint.RunCheckpoints, metrics) -> None:
        loop = state.loop
        score = self.monitor.value(metrics)
        improved = self.monitor.is_improvement(score, loop.best_score)
        if improved:
            loop.best_score, loop.best_epoch = score, loop.epoch
            loop.best_metrics = {k: v for k, v in metrics.items() if k.startswith("val/")}
        checkpoints.write(state.state_dict(), best=improved)

    def _resume(self, state: TrainingState, checkpoints: checkpoint.RunCheckpoints, ckpt_path: Path) -> None:
        state.load_state_dict(checkpoint.load(ckpt_path, map_location=self.device), str(ckpt_path))
        checkpoints.carry_best_over(ckpt_path.with_name("best.ckpt"), state.loop.best_epoch)
        log.info("resumed from %s at epoch %d, step %d", ckpt_path, state.loop.epoch, state.loop.global_step)

    def _stop_for_signal(self, signals: SignalCatcher, global_step: int, at_step: bool = False) -> bool:
        """Whether to stop for SIGTERM/SIGINT now. Under DDP all ranks must stop at the same step, so they
        agree through a collective: at every epoch's start, and inside one every ``log_every_n_steps``."""
        if self.ddp and at_step and global_step % self.log_every_n_steps:
            return False
        return signals.received(all_ranks=self.ddp)

    def _save_interrupted(
        self, state: TrainingState, checkpoints: checkpoint.RunCheckpoints, signals: SignalCatcher
    ) -> None:
        checkpoints.write(state.state_dict())
        loop = state.loop
        raise Interrupted(
            f"stopped by {signals.name} at epoch {loop.epoch + 1}, step {loop.global_step}; saved {checkpoints.last}",
            signals.signum,
            checkpoints.last,
        )

    # -- the end -------------------------------------------------------------------------------------
    def _test(
        self,
        model: nn.Module,
        data: BatchedData,
        checkpoints: checkpoint.RunCheckpoints,
        outputs: RunOutputs,
        context: FitContext,
    ) -> dict[str, Any]:
        """The test split with the best weights, once: its metrics, and its outputs for the callbacks."""
        weights = checkpoints.best_weights()
        if weights is not None:
            model.load_state_dict(weights)
        collected: list[tuple[torch.Tensor, torch.Tensor]] = []

        def on_batch(x: torch.Tensor, y: torch.Tensor, batch_outputs: torch.Tensor) -> None:
            collected.append((batch_outputs.cpu(), y.cpu()))
            for callback in self.callbacks.values():
                callback.on_test_batch_end(context, x, y, batch_outputs)

        test_metrics = self.evaluate(model, data, "test", on_batch)
        loop = context.loop
        outputs.log_scalars(test_metrics, loop.global_step)
        checkpoints.record_test(test_metrics)
        gathered = [pair for rank_pairs in distributed.gather(collected) for pair in rank_pairs]
        if gathered:
            test = TestOutputs(torch.cat([o for o, _ in gathered]), torch.cat([t for _, t in gathered]))
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
