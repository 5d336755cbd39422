"""Data-parallel runs launched by torchrun: process-group set-up, the rank-0 rule, and one run dir for all.

torchrun starts one process per rank and each runs Hydra, which would give every rank its own timestamped
run dir. ``setup()`` runs before Hydra: it joins the process group and sets rank 0's start time on every
rank, which the run dir's ``${trainlab.start_time:...}`` formats, so all ranks resolve the same run dir. Ranks other than 0 also
tell Hydra not to write its own files there; only rank 0 writes checkpoints, events and metrics.
"""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist

from trainlab import resolvers
from trainlab.errors import ConfigError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def use_ddp(strategy: str) -> bool:
    """Whether ``trainer.strategy`` asks for DDP. A launch that does not fit the strategy is refused, rather
    than run as N independent copies."""
    if strategy not in ("auto", "ddp"):
        raise ConfigError(f"trainer.strategy must be auto or ddp, got {strategy!r}")
    if strategy == "ddp" and not is_distributed():
        raise ConfigError(
            "trainer.strategy=ddp needs one process per device, started by torchrun: "
            "torchrun --nproc_per_node=2 train.py trainer.strategy=ddp ..."
        )
    if strategy == "auto" and is_distributed():
        raise ConfigError(
            f"started by torchrun with {world_size()} processes, but trainer.strategy=auto; "
            "add trainer.strategy=ddp"
        )
    return strategy == "ddp"


def local_device() -> torch.device:
    """This rank's GPU (``cuda:LOCAL_RANK``) where there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def setup() -> None:
    """Before Hydra: join torchrun's process group (NCCL on GPUs, gloo on CPUs) and agree on one run dir."""
    if launched_by_torchrun() and not is_distributed():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_device())
        store, rank_, size = next(dist.rendezvous("env://"))
        dist.init_process_group(backend, store=attempt_store(store), rank=rank_, world_size=size)
        start = [time.time()]
        dist.broadcast_object_list(start, src=0)
        resolvers.set_start_time(start[0])
        if not is_main():  # Hydra's own files (.hydra/, the log file) are rank 0's to write
            sys.argv += [
                "hydra.output_subdir=null",
                "hydra/job_logging=stdout",
                "hydra.job_logging.root.level=WARNING",
            ]


def attempt_store(store: dist.Store) -> dist.Store:
    """The part of torchrun's rendezvous store that belongs to this attempt of the group. torchrun's agent
    serves the same store to every attempt (``--max-restarts``; ``TORCHELASTIC_RESTART_COUNT`` counts them),
    so a restarted group would otherwise read the addresses that the failed attempt's processes left there,
    and fail to connect to processes that are gone."""
    return dist.PrefixStore(f"trainlab/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel``, which averages the ranks' gradients in backward."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def batch_share(n: int, global_batch: int, batch_start: int, num_samples: int) -> float:
    """The factor on this rank's mean loss over its ``n`` samples of a global batch (of ``global_batch``
    samples, starting at sample ``batch_start`` of the epoch's ``num_samples``): DDP averages the ranks'
    gradients, so the factor is this rank's share of the batch times the ranks, and the gradient is the
    global batch's mean whatever its split, as a single process's; 1 in a single process."""
    if not is_distributed():
        return 1.0
    return n * world_size() / min(global_batch, num_samples - batch_start)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank: for decisions all ranks must take together (stop on a signal)."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], device=local_device() if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank: a decision taken once (early stopping) and broadcast."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], device=local_device() if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(value, src=0)
    return bool(value.item())


def from_main_object(obj):
    """Rank 0's ``obj`` (any picklable value, e.g. a state dict read from rank 0's files) on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank: ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
