"""Preemption: SIGTERM or SIGINT (a cluster's time limit, Ctrl-C) lets the current step finish, then the
trainer writes ``last.ckpt`` and raises ``Interrupted``; a second signal aborts at once."""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path

from trainlab import distributed

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived: ``last.ckpt`` (at ``ckpt_path``) was written and the run stopped cleanly."""

    def __init__(self, message: str, signum: int, ckpt_path: Path):
        super().__init__(message)
        self.exit_code = 128 + signum
        self.ckpt_path = ckpt_path


class SignalCatcher:
    """``with SignalCatcher() as signals: ... if signals.received(): ...``; the previous handlers come back
    on exit. Outside the main thread (where Python allows no handlers) it catches nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: finishing this step and saving last.ckpt", signal.Signals(signum).name)

    def __enter__(self) -> SignalCatcher:
        with contextlib.suppress(ValueError):  # not the main thread
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def received(self, all_ranks: bool = False) -> bool:
        """Whether a signal arrived. ``all_ranks`` (DDP): whether one arrived on any rank, a collective that
        every rank must call at the same step, so that they all stop together."""
        if not all_ranks:
            return self.signum is not None
        if distributed.any_rank(self.signum is not None):
            self.signum = self.signum or signal.SIGTERM  # another rank got it
            return True
        return False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name
