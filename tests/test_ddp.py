"""Data-parallel training with torchrun on the CPU (gloo, 2 processes): one run dir, the same weights and
metrics as one process with the same global batch, and checkpoints that move between the two; with gradient
accumulation, one all-reduce per optimizer step. In fp32: bf16 rounds a half batch's gradients otherwise
than a whole one's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing
from conftest import ROOT, cli, make_config, make_data, read_csv, read_metrics

from trainlab import distributed
from trainlab.run import train

pytestmark = pytest.mark.slow

RUN = [
    "trainer.max_epochs=2",
    "trainer.progress=false",
    "model.dropout=0",
    "dataset.batch_size=64",
    "trainer.precision=32",
]


def torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, str(ROOT / "train.py"), "trainer.strategy=ddp", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 2-process run in a fresh folder, with the run dir Hydra names itself, logging to TensorBoard and CSV."""
    cwd = tmp_path_factory.mktemp("ddp")
    torchrun(*RUN, "logger=[tensorboard,csv]", cwd=cwd)
    run_dirs = [p.parent for p in (cwd / "outputs").rglob("metrics.json")]
    assert len(run_dirs) == 1, run_dirs
    assert len(list((cwd / "outputs").glob("*/*"))) == 1  # no second, timestamp-split dir of rank 1
    return run_dirs[0]


def test_ddp_matches_one_process_and_predict(ddp_run, tmp_path):
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list((ddp_run / "tensorboard").iterdir())) == 1  # only rank 0 writes events
    assert [row["epoch"] for row in read_csv(ddp_run / "metrics.csv")] == [
        "1",
        "2",
        "2",
    ]  # and rows: 2 epochs, test

    single = tmp_path / "single"
    done = cli("train.py", *RUN, f"hydra.run.dir={single}")
    assert done.returncode == 0, done.stderr
    ddp_weights, single_weights = weights(ddp_run), weights(single)
    for name, tensor in ddp_weights.items():
        torch.testing.assert_close(tensor, single_weights[name], rtol=0, atol=1e-5)
    assert read_metrics(ddp_run)["test/acc"] == pytest.approx(read_metrics(single)["test/acc"], abs=1e-6)

    out = tmp_path / "predict.json"
    done = cli("predict.py", f"ckpt={ddp_run}/checkpoints/best.ckpt", f"output={out}")
    assert done.returncode == 0, done.stderr
    predicted = json.loads(out.read_text())
    for name in ("test/acc", "test/loss"):
        assert read_metrics(ddp_run)[name] == pytest.approx(predicted[name], abs=1e-6)


def test_checkpoints_move_between_ddp_and_one_process(ddp_run, tmp_path):
    # a DDP checkpoint resumed in one process (its config says trainer.strategy=ddp)...
    single = tmp_path / "single"
    done = cli(
        "train.py",
        *RUN[1:],
        "trainer.max_epochs=3",
        "trainer.strategy=auto",
        f"ckpt_path={ddp_run}/checkpoints/last.ckpt",
        f"hydra.run.dir={single}",
    )
    assert done.returncode == 0, done.stderr
    assert read_metrics(single)["epochs"] == 3
    # ...and a one-process checkpoint resumed under DDP
    torchrun(
        *RUN[1:],
        "trainer.max_epochs=4",
        f"ckpt_path={single}/checkpoints/last.ckpt",
        f"hydra.run.dir={tmp_path / 'ddp'}",
        cwd=tmp_path,
    )
    assert read_metrics(tmp_path / "ddp")["epochs"] == 4
    assert read_metrics(tmp_path / "ddp")["global_step"] == 4 * read_metrics(ddp_run)["global_step"] // 2


def test_ddp_strategy_without_torchrun_is_refused(tmp_path):
    done = cli("train.py", "trainer.strategy=ddp", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 1
    assert "torchrun --nproc_per_node" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


ACCUMULATE = [*RUN[2:], "trainer.max_epochs=1", "trainer.accumulate_grad_batches=3", "~logger"]


def count_all_reduces(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``distributed.wrap`` with a communication hook that counts the all-reduces (one per bucket of
    gradients, and this model's fit in one bucket) before making them as DDP does by default."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    wrapped = WRAP(model, device)
    wrapped.all_reduces = 0

    def hook(state, bucket):
        wrapped.all_reduces += 1
        return allreduce_hook(state, bucket)

    wrapped.register_comm_hook(None, hook)
    ALL_REDUCES.append(wrapped)
    return wrapped


WRAP, ALL_REDUCES = distributed.wrap, []


def accumulating_rank(rank: int, init_file: str, run_dir: str, counts) -> None:
    """One of 2 ranks (a process of its own, in a gloo group) training with accumulation in ``run_dir``;
    puts its all-reduces and optimizer steps into ``counts``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    distributed.wrap = count_all_reduces
    metrics = train(make_config(*ACCUMULATE, "trainer.strategy=ddp"), run_dir)
    counts[rank] = (ALL_REDUCES[0].all_reduces, metrics["global_step"])
    dist.destroy_process_group()


def test_accumulated_gradients_are_all_reduced_once_per_optimizer_step(tmp_path):
    """3 batches per optimizer step: each rank all-reduces its gradients once per step (no_sync on the two
    batches that only accumulate), and ends with the weights of one process accumulating the same batches."""
    (tmp_path / "ddp").mkdir()  # Hydra makes a run dir; train() alone does not
    with torch.multiprocessing.Manager() as manager:
        shared = manager.dict()
        torch.multiprocessing.spawn(
            accumulating_rank, args=(str(tmp_path / "init"), str(tmp_path / "ddp"), shared), nprocs=2
        )
        counts = dict(shared)
    single = train(make_config(*ACCUMULATE), tmp_path / "single")
    steps = single["global_step"]
    assert steps == -(-make_data(*ACCUMULATE).num_batches("train") // 3) and steps > 1
    assert counts == {0: (steps, steps), 1: (steps, steps)}
    ddp_weights, single_weights = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    for name, tensor in ddp_weights.items():
        torch.testing.assert_close(tensor, single_weights[name], rtol=0, atol=1e-5)
