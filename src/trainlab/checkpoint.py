"""Checkpoint files: written atomically, read safely.

A checkpoint is a dict of plain types and tensors, so ``torch.load(path, weights_only=True)`` reads it and
no pickled code ever runs. It holds everything a run needs to continue or to be used: model, optimizer,
scheduler and scaler states, epoch, step, best score, callback and RNG states, the data set's fitted
preprocessing, the fully resolved config as YAML text (read back as data: ``stored_config``) and, in
``best.ckpt`` once the run has tested it, the test metrics.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import secrets
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trainlab import distributed
from trainlab.errors import CheckpointError

if TYPE_CHECKING:
    from trainlab.monitor import Monitor
    from trainlab.state import TrainingState

log = logging.getLogger(__name__)

FORMAT = "trainlab/1"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format is a zip archive


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` via a temporary file in the same folder and an atomic rename, so that a
    crash or ``kill -9`` at any moment leaves either the old file or the new one, never half of one. A write
    that fails (disk full, file too large) removes the temporary file and raises ``CheckpointError``. The
    file's mode is the umask's, as for any file the user writes (``tempfile.mkstemp`` would make it 0600:
    unreadable to a separate serving user)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError raised while handling the OSError
        cause = error if isinstance(error, OSError) else error.__context__
        if isinstance(error, OSError | RuntimeError) and isinstance(cause, OSError):
            raise CheckpointError(
                f"could not write {path.name} in {path.parent}: {cause.strerror or cause}; free space there or "
                "choose another hydra.run.dir (the checkpoints already there are untouched)"
            ) from None
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a trainlab checkpoint with ``weights_only=True``; every way it can fail gets its own message.

    Files that are not torch's zip format (a bare pickle, anything else) are refused before a byte of them
    is unpickled; inside a zip, torch's weights-only unpickler refuses anything but tensors and plain data.
    ``mmap``: the tensors are mapped from the file, not read (to read the plain data alone).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run's checkpoints/last.ckpt or best.ckpt")
    with open(path, "rb") as f:
        magic = f.read(len(ZIP_MAGIC))
    if magic != ZIP_MAGIC:
        what = (
            "empty"
            if not magic
            else "a bare pickle, which could run code: refused without reading it"
            if magic.startswith(b"\x80")
            else "not a file written by torch.save"
        )
        raise CheckpointError(f"{path} is not a trainlab checkpoint ({what}); use a run's last.ckpt or best.ckpt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(error))
        raise CheckpointError(
            f"refused to load {path}: it holds {blocked[1] if blocked else 'objects'}, not only tensors and plain "
            "data, so it could run code; nothing in it was run. Only load checkpoints you trust"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError) as error:
        reason = str(error).strip().split(". ")[0] or type(error).__name__
        raise CheckpointError(
            f"{path} is truncated or corrupt ({reason}); use the run's last.ckpt or best.ckpt"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not a trainlab checkpoint (no {FORMAT!r} format tag); use a checkpoint "
            "written by train.py"
        )
    return state


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Load the checkpoint's weights into ``model``, or say how they differ from it."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        first_difference = (str(error).splitlines()[1:] or [str(error)])[0].strip()
        if len(first_difference) > 160:
            first_difference = first_difference[:157] + "..."
        raise CheckpointError(
            f"{path} holds weights for a different model than the config builds ({first_difference}); use the "
            "model settings of the run that wrote it"
        ) from None


def rng_states() -> dict[str, Any]:
    """Every random number generator a run draws from, as plain data."""
    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def link(source: Path, target: Path) -> bool:
    """Make ``target`` a second name of the file ``source``: a hard link, put in place atomically by a rename,
    so that an identical checkpoint costs no second write and fsync. Safe because ``save`` never rewrites a
    file: it gives the name a new file, and the file the other name points to stays as it was. False where
    the file system has no hard links (some network and FAT file systems); then nothing changed."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, target)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


class RunCheckpoints:
    """A run's ``checkpoints/`` folder and the checkpoint policy: ``last.ckpt`` after every epoch (and on
    preemption), ``best.ckpt`` whenever the monitored metric improved: then the same state, so ``best.ckpt``
    becomes a hard link to that ``last.ckpt`` (``link``). Only rank 0 writes and reads; the others get its
    answers."""

    def __init__(self, run_dir: Path, monitor: Monitor | None = None):
        self.folder = Path(run_dir) / "checkpoints"
        self.last, self.best = self.folder / "last.ckpt", self.folder / "best.ckpt"
        self.monitor = monitor

    def save_epoch(self, state: TrainingState, metrics: dict[str, float]) -> None:
        """After an epoch: ``last.ckpt``, and ``best.ckpt`` if the monitored metric beat the best so far (the
        loop's best score, epoch and validation metrics are updated first, so that both files hold them)."""
        loop = state.loop
        score = self.monitor.value(metrics)
        improved = self.monitor.is_improvement(score, loop.best_score)
        if improved:
            loop.best_score, loop.best_epoch = score, loop.epoch
            loop.best_metrics = {k: v for k, v in metrics.items() if k.startswith("val/")}
        self.write(state.state_dict(), best=improved)

    def restore(self, state: TrainingState, ckpt_path: Path, device: torch.device) -> None:
        """Continue ``state`` from the checkpoint ``ckpt_path`` (of this run or another one), and carry that
        run's ``best.ckpt`` over (``carry_best_over``)."""
        state.load_state_dict(load(ckpt_path, map_location=device), str(ckpt_path))
        self.carry_best_over(ckpt_path.with_name("best.ckpt"), state.loop.best_epoch)
        log.info("resumed from %s at epoch %d, step %d", ckpt_path, state.loop.epoch, state.loop.global_step)

    def write(self, state: dict[str, Any], best: bool = False) -> None:
        if distributed.is_main():
            save(state, self.last)
            if best and not link(self.last, self.best):
                save(state, self.best)

    def carry_best_over(self, previous_best: Path, best_epoch: int) -> None:
        """Copy a resumed run's ``best.ckpt`` into this run, so that the test uses the best epoch even if it
        came before the resume."""
        if not best_epoch or previous_best.resolve() == self.best.resolve() or not distributed.is_main():
            return
        state = load(previous_best) if previous_best.is_file() else {}
        if state.get("epoch") != best_epoch:
            log.warning(
                "%s is missing or not from the best epoch (%d): the test will use the best checkpoint "
                "written after resuming, or the final weights",
                previous_best,
                best_epoch,
            )
            return
        save(state, self.best)

    def record_test(self, metrics: dict[str, float]) -> None:
        """Store the test metrics in ``best.ckpt``, whose weights they were measured with, so that a copy of
        that file alone still has them (predict's and serve's ``/metadata``, export's ONNX metadata). Saved as
        a new file under the name, like every save: the ``last.ckpt`` it may be a hard link to is untouched."""
        if distributed.is_main() and metrics and self.best.is_file():
            save(
                {**load(self.best, mmap=True), "test_metrics": metrics}, self.best
            )  # the weights copied, not read first

    def best_weights(self) -> dict[str, torch.Tensor] | None:
        """The model weights of ``best.ckpt`` on every rank; None if there is none (no epoch trained)."""
        weights = load(self.best)["model"] if distributed.is_main() and self.best.exists() else None
        return distributed.from_main_object(weights)  # rank 0's files are rank 0's alone
