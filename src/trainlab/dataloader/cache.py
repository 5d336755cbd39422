"""Decoded data sets cached on disk: the first run decodes the raw files into tensors once and writes them
to one file; later runs read that file instead of decoding again.

The cache lies next to the raw files (``<folder>/trainlab-cache.pt``; ``trainlab-cache-<variant>.pt`` for
one of several decodings of the same files, e.g. at another image size). Where that folder is read-only
(no write permission, or its mode marks it read-only, as shared data folders are) it goes to
``$XDG_CACHE_HOME/trainlab/`` (default ``~/.cache/trainlab/``) instead. It holds a fingerprint of the raw
files (name, size and modification time of each), and is decoded again when they change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainlab import checkpoint
from trainlab.errors import CheckpointError

log = logging.getLogger(__name__)

CACHE_PREFIX = "trainlab-cache"
CACHE_NAME = f"{CACHE_PREFIX}.pt"


def cache_path(folder: Path, variant: str = "") -> Path:
    """Where the cache of the data set in ``folder`` (decoded as ``variant`` says) lives."""
    suffix = f"-{variant}" if variant else ""
    writable_parent = folder if folder.is_dir() else folder.parent
    if _writable(writable_parent):
        return folder / f"{CACHE_PREFIX}{suffix}.pt"
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trainlab"
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    return user_cache / f"{folder.name}-{key}{suffix}.pt"


def _writable(folder: Path) -> bool:
    """Writable, and not marked read-only (root may write anywhere; a folder without the owner's write bit
    is meant to stay as it is)."""
    return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)


def fingerprint(folder: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every raw file under ``folder``, the caches themselves and hidden
    files (a cache being written) excluded."""
    if not folder.is_dir():
        return []
    raw = ((p, p.stat()) for p in folder.rglob("*") if not p.name.startswith((CACHE_PREFIX, ".")))
    return sorted(
        (str(p.relative_to(folder)), info.st_size, info.st_mtime_ns)
        for p, info in raw
        if stat.S_ISREG(info.st_mode)
    )


def load_or_decode(folder: Path, decode: Callable[[], dict[str, Any]], variant: str = "") -> dict[str, Any]:
    """The tensors ``decode()`` returns for the raw files in ``folder``, read from the cache when it is
    current, else decoded and cached. ``decode`` may create the folder (a download). ``variant`` names this
    decoding among others of the same files (each has its own cache file)."""
    path = cache_path(folder, variant)
    if path.is_file():
        try:
            cached = torch.load(path, weights_only=True, mmap=True)
        except Exception as error:  # a cache from another torch version, a damaged file: decode again
            log.warning("ignoring unreadable data cache %s (%s)", path, error)
            cached = {}
        if cached.get("fingerprint") == fingerprint(folder):
            log.info("read %s from the cache %s", folder.name, path)
            return cached["tensors"]
    start = time.perf_counter()
    tensors = decode()
    path = cache_path(folder, variant)
    try:
        checkpoint.save({"fingerprint": fingerprint(folder), "tensors": tensors}, path)
    except (OSError, CheckpointError) as error:
        log.warning("could not write the data cache %s (%s); the next run decodes again", path, error)
    else:
        log.info("decoded %s in %.1f s and cached it in %s", folder.name, time.perf_counter() - start, path)
    return tensors
