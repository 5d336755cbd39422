"""Where and how the arithmetic runs: the device, mixed precision, and torch's process-wide switches."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from trainlab.errors import ConfigError

log = logging.getLogger(__name__)

Autocast = Callable[[], contextlib.AbstractContextManager]  # what forward passes run in

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}
# x86 CPUs that multiply bf16 matrices several times faster than fp32: AMX tiles (Sapphire Rapids on), or
# AVX-512's bf16 dot products (Cooper Lake, Zen 4 on); as Linux names them in /proc/cpuinfo's flags
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pick_device(device: str) -> torch.device:
    """``auto``: CUDA, then Apple's MPS, then the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_precision(precision: str | int) -> str:
    if str(precision) not in (*PRECISIONS, "auto"):
        raise ConfigError(f"trainer.precision must be auto, 32, bf16 or 16, got {precision!r}")
    return str(precision)


def choose_precision(
    setting: str, device_type: str, model_class: type, cpu_flags: Iterable[str] = (), cuda_bf16: bool = False
) -> tuple[str, str]:
    """``trainer.precision`` and why: ``auto`` is bf16 autocast where the device multiplies bf16 fast (a CPU
    with one of ``FAST_BF16_CPU_FLAGS``, a CUDA device with bf16) and the model class gains by it (its
    ``auto_bf16``, true unless it says otherwise: false where bf16 cost it accuracy or speed), else 32; any
    other setting is itself."""
    if setting != "auto":
        return setting, "trainer.precision"
    if not getattr(model_class, "auto_bf16", True):
        return "32", f"{model_class.__name__}.auto_bf16 is false: bf16 loses it accuracy or speed"
    if device_type == "cuda":
        return ("bf16", "a CUDA device with bf16") if cuda_bf16 else ("32", "a CUDA device without bf16")
    fast = sorted(set(FAST_BF16_CPU_FLAGS) & set(cpu_flags))
    if device_type == "cpu" and fast:
        return "bf16", f"a CPU with {' and '.join(fast)}"
    if device_type == "cpu":
        return "32", f"a CPU without {' or '.join(FAST_BF16_CPU_FLAGS)}"
    return "32", f"bf16 is not known to be faster on {device_type}"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags, as Linux lists them in ``cpuinfo`` (default: /proc/cpuinfo's text); none
    where there is no such file."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return set(value.split())
    return set()


def resolve_precision(setting: str, device: torch.device, model: torch.nn.Module) -> str:
    """The precision a run trains in (``choose_precision`` on this machine), logged when it was ``auto``."""
    precision, why = choose_precision(
        setting,
        device.type,
        type(model),
        cpu_flags() if device.type == "cpu" else (),
        device.type == "cuda" and torch.cuda.is_bf16_supported(),
    )
    if setting == "auto":
        log.info("precision %s (auto: %s)", precision, why)
    return precision


def autocast(precision: str, device: torch.device) -> Autocast:
    """A factory of the context that forward passes run in: autocast to bf16/fp16, or nothing for 32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def use_channels_last(setting: bool | str, model: torch.nn.Module, device: torch.device) -> bool:
    """``trainer.channels_last``; ``auto``: for convolutional models on the CPU, whose convolutions run 1.3x
    (training) to 2x (evaluation) faster on channels-last images there, with the same results up to float
    rounding."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cpu" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def prepare_model(
    model: torch.nn.Module, device: torch.device, channels_last: bool, compile: bool
) -> torch.nn.Module:
    """The model on ``device``, in channels-last memory order and compiled where asked."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()  # in place, so the state dict keeps its keys (no "_orig_mod." prefix)
    return model


def configure_torch(num_threads: int | None, deterministic: bool) -> None:
    """torch's process-wide settings: intra-op threads (None: torch's default), deterministic algorithms; and
    the allocator's (``keep_freed_memory``)."""
    keep_freed_memory()
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
        torch.use_deterministic_algorithms(True, warn_only=True)
    if num_threads:
        torch.set_num_threads(num_threads)


MMAP_THRESHOLD = 32 * 2**20  # glibc's malloc: blocks up to this size come from its heap (its upper bound)
TRIM_THRESHOLD = 2**30  # and the heap's free top is given back to the system only beyond this


def keep_freed_memory() -> None:
    """Let glibc's malloc keep the memory a training step frees for the next step.

    By default it hands freed blocks back to the system (blocks from 128 KiB up, where its thresholds sit
    then, and the free top of its heap), so every step faults its activations in again: on a virtual
    machine, where a page fault costs several microseconds, 400,000 faults an epoch of the MNIST CNN's
    100 batches, which made it 1.18x a hand-written loop's. Fixed thresholds keep them, as jemalloc and
    tcmalloc do; the data set's large tensors are still mapped and unmapped whole. A no-op where the C
    library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mallopt(m_mmap_threshold, MMAP_THRESHOLD)
    mallopt(m_trim_threshold, TRIM_THRESHOLD)
