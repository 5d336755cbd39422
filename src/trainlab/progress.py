"""A progress bar per epoch (rich), cheap enough to advance on every step: an advance counts, and hands the
count to rich (a lock, its speed estimate: some microseconds) at most ten times a second; the bar is drawn
twice a second (each drawing takes about 1 ms of the training process's time)."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    """``with Progress("epoch 1/10", total) as bar: bar.advance(); bar.set_loss(0.3)``."""

    def __init__(self, description: str, total: int, enabled: bool = True):
        self.enabled = enabled
        self.bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[loss]}"),
            disable=not enabled,
            refresh_per_second=2,
        )
        self.task = self.bar.add_task(description, total=total, loss="")
        self.done, self.shown_at = 0, 0.0  # steps counted; when rich was last told

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.update(self.task, completed=self.done)
        self.bar.stop()

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        now = time.monotonic()
        if self.enabled and now - self.shown_at >= 0.1:
            self.bar.update(self.task, completed=self.done)
            self.shown_at = now

    def set_loss(self, loss: float) -> None:
        self.bar.update(self.task, loss=f"loss {loss:.4f}")


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))


def print_summary(results: dict, run_dir) -> None:
    """The one-screen summary at the end of a run."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {run_dir}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console(stderr=True).print(table)
