"""The monitored metric: named once (``trainer.monitor``, ``trainer.monitor_mode``) and read by the best
checkpoint, early stopping, ReduceLROnPlateau and the sweeps' rankings alike."""

from __future__ import annotations

from trainlab.errors import ConfigError, TrainingError


class Monitor:
    """The tag that defines "best" (``val/loss``, ``val/acc``...) and whether lower or higher is better."""

    def __init__(self, name: str, mode: str):
        if mode not in ("min", "max"):
            raise ConfigError(f"trainer.monitor_mode must be min or max, got {mode!r}")
        self.name, self.mode = name, mode

    def value(self, metrics: dict[str, float]) -> float:
        """The monitored value among an epoch's ``metrics``."""
        if self.name not in metrics:
            raise TrainingError(
                f"trainer.monitor={self.name} is not a logged metric; choose one of {', '.join(sorted(metrics))}"
            )
        return metrics[self.name]

    def is_improvement(self, value: float, best: float | None, min_delta: float = 0.0) -> bool:
        """Whether ``value`` beats ``best`` (None: nothing yet) by more than ``min_delta``."""
        if best is None:
            return True
        return value > best + min_delta if self.mode == "max" else value < best - min_delta
