"""Checkpoint files: written atomically, read safely.

A checkpoint is a dict of plain types and tensors, so ``torch.load(path, weights_only=True)`` reads it and
no pickled code ever runs. It holds everything a run needs to continue or to be used: model, optimizer,
scheduler and scaler states, epoch, step, best score, callback and RNG states, the data set's fitted
preprocessing, and the fully resolved config as YAML text.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "trainlab/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; its message says why and what to do."""


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` via a temporary file in the same folder and an atomic rename, so that a
    crash or ``kill -9`` at any moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a trainlab checkpoint with ``weights_only=True``; every way it can fail gets its own message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass ckpt=<run dir>/checkpoints/best.ckpt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"refused to load {path}: it contains objects other than tensors and plain data, which could run "
            f"code ({first}); only load checkpoints you trust, and only ones written by trainlab"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or not a torch file: {error}); "
            "use the run's last.ckpt or best.ckpt"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a trainlab checkpoint (no {FORMAT!r} format tag)")
    return state


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
