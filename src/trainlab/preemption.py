"""Preemption: SIGTERM or SIGINT (a cluster's time limit, Ctrl-C) lets the current step finish, then the
trainer writes ``last.ckpt`` and raises ``Interrupted``; a second signal aborts at once. A signal that comes
after the last training step (in the last validation, the test) lets the run finish, and then stops the
next run of the process, a sweep's next job (``stop_for_late_signal``): it is never lost."""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from trainlab import distributed

if TYPE_CHECKING:
    from trainlab.checkpoint import RunCheckpoints
    from trainlab.state import TrainingState

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived: ``last.ckpt`` (at ``ckpt_path``) was written and the run stopped cleanly;
    no ``ckpt_path``: the signal came as the previous run was finishing, and this one did not start."""

    def __init__(self, message: str, signum: int, ckpt_path: Path | None = None):
        super().__init__(message)
        self.exit_code = 128 + signum
        self.ckpt_path = ckpt_path


_late_signal: int | None = None  # caught as a run was finishing: it stops the process's next run


def stop_for_late_signal() -> None:
    """Raise ``Interrupted`` if a signal came as this process's previous run was finishing."""
    global _late_signal
    signum, _late_signal = _late_signal, None
    if signum is not None:
        name = signal.Signals(signum).name
        raise Interrupted(f"stopped by {name}, which came as the previous run was finishing", signum)


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
        log.warning(
            "%s received: stopping after this step, saving last.ckpt (after the run, if it is finishing)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> SignalCatcher:
        with contextlib.suppress(ValueError):  # not the main thread
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        global _late_signal
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self.signum is not None and exc[0] is None:  # caught, but the run ended without stopping for it
            _late_signal = self.signum

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


class Preemption(SignalCatcher):
    """The trainer's signal handling: whether to stop now, and stopping (``last.ckpt``, then ``Interrupted``).

    Under DDP all ranks must stop at the same step, so they agree through a collective: at every epoch's
    start, and inside one every ``every`` optimizer steps (``trainer.log_every_n_steps``)."""

    def __init__(self, ddp: bool, every: int):
        super().__init__()
        self.ddp, self.every = ddp, every

    def __enter__(self) -> Preemption:
        super().__enter__()
        return self

    def requested(self, global_step: int, at_step: bool = False) -> bool:
        """Whether to stop for SIGTERM/SIGINT now: at an epoch's start, or after optimizer step ``global_step``
        (``at_step``)."""
        if self.ddp and at_step and global_step % self.every:
            return False
        return self.received(all_ranks=self.ddp)

    def stop(self, state: TrainingState, checkpoints: RunCheckpoints) -> NoReturn:
        """Save ``last.ckpt`` where the run is, and raise ``Interrupted`` with the way to resume."""
        checkpoints.write(state.state_dict())
        loop = state.loop
        raise Interrupted(
            f"stopped by {self.name} at epoch {loop.epoch + 1}, step {loop.global_step}; saved {checkpoints.last}",
            self.signum,
            checkpoints.last,
        )
