"""Data-parallel training with torchrun on the CPU (gloo, 2 processes): one run dir, the same weights and
metrics as one process with the same global batch, and checkpoints that move between the two; two machines
simulated by two torchrun launches on one (c10d rendezvous on 127.0.0.1); a group whose worker dies, restarted
by torchrun, continuing its run from last.ckpt (ckpt_path=auto) to the same bits; with gradient accumulation,
one all-reduce per optimizer step. In fp32: bf16 rounds a half batch's gradients otherwise than a whole one's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing
from conftest import ROOT, assert_same_weights, cli, make_config, make_data, read_csv, read_metrics, scalars
from mlflow import MlflowClient

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


def free_port() -> int:
    """A TCP port that nothing listens on now, for a rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def elastic(*options: str, port: int) -> list[str]:
    """torchrun with a c10d rendezvous on this machine (as on a cluster, with the head node's address)."""
    return [
        *(sys.executable, "-m", "torch.distributed.run", "--rdzv_backend=c10d"),
        *(f"--rdzv_endpoint=127.0.0.1:{port}", "--local_addr=127.0.0.1", *options),
        *(str(ROOT / "train.py"), "trainer.strategy=ddp", *RUN),
    ]


def launch(command: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """``command`` started in a session of its own (torchrun and its workers: one process group), its output
    read as text."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finished(*processes: subprocess.Popen) -> list[str]:
    """Wait for ``launch``ed ``processes``; their outputs. One that fails or hangs ends them all, their
    workers included."""
    try:
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):  # what is left of its group: nothing, if it succeeded
                os.killpg(process.pid, signal.SIGKILL)
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    return outputs


def test_two_machines_train_one_run_as_one_machine_does(ddp_run, tmp_path):
    """Two torchrun launches, one process each (--nnodes=2), each in a folder of its own as on two machines:
    one run dir, on the machine of rank 0, which alone writes; the weights of the one-machine run, bitwise."""
    port, machines = free_port(), [tmp_path / "machine0", tmp_path / "machine1"]
    launches = []
    for node_rank, machine in enumerate(machines):
        machine.mkdir()
        options = ("--nnodes=2", "--nproc_per_node=1", f"--node_rank={node_rank}", "--rdzv_id=two")
        launches.append(launch([*elastic(*options, port=port), "logger=[tensorboard,csv]"], machine))
    finished(*launches)
    written = [[p for p in machine.rglob("*") if p.is_file()] for machine in machines]
    (files,) = [files for files in written if files]  # rank 0's machine; the other one's has no file
    run_dirs = {p.parent for p in files if p.name == "metrics.json"}
    assert len(run_dirs) == 1, run_dirs
    (run_dir,) = run_dirs
    assert len(list((run_dir / "tensorboard").iterdir())) == 1
    assert [row["epoch"] for row in read_csv(run_dir / "metrics.csv")] == ["1", "2", "2"]
    assert_same_weights(run_dir, ddp_run)


def test_a_group_whose_worker_dies_is_restarted_from_last_ckpt_to_the_same_bits(ddp_run, tmp_path):
    """Rank 1 dies in the middle of epoch 2; torchrun (--max-restarts=1) starts the group again with the same
    command, and ckpt_path=auto continues the run, named by the rendezvous id, from epoch 1's last.ckpt: it ends
    bitwise as the run that never stopped. Its MLflow run goes on too, without the points logged twice."""
    per_epoch = read_metrics(ddp_run)["global_step"] // 2
    options = ("--nnodes=1", "--nproc_per_node=2", "--max-restarts=1", "--rdzv_id=restarted")
    store = tmp_path / "mlflow.db"
    command = [
        *elastic(*options, port=free_port()),
        "logger=[tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri=sqlite:///{store}",
        "trainer.log_every_n_steps=1",
        "ckpt_path=auto",
        "+hydra.callbacks.exit_once._target_=exit_once.ExitOnce",  # tests/exit_once.py
        "+hydra.callbacks.exit_once.rank=1",
        f"+hydra.callbacks.exit_once.step={per_epoch + per_epoch // 2}",
    ]
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    finished(launch(command, tmp_path, PYTHONPATH=pythonpath))
    run_dir = tmp_path / "outputs" / "runs" / "restarted"
    assert [p.name for p in (tmp_path / "outputs" / "runs").iterdir()] == ["restarted"]
    log = (run_dir / "train.log").read_text()  # both attempts': the first one's epoch 1, the second one's 2
    assert log.count("epoch 1/2:") == 1 and log.count("epoch 2/2:") == 1
    assert f"resumed from {run_dir}/checkpoints/last.ckpt at epoch 1, step {per_epoch}" in log
    assert_same_weights(run_dir, ddp_run)

    client = MlflowClient(f"sqlite:///{store}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    for tag, points in scalars(run_dir).items():  # TensorBoard's, which purged what the first attempt logged late
        logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag)]
        assert [step for step, _ in logged] == [step for step, _ in points], tag
        assert [value for _, value in logged] == pytest.approx([value for _, value in points]), tag


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
