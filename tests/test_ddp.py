"""Data-parallel training with torchrun on the CPU (gloo, 2 processes): one run dir, the same weights and
metrics as one process with the same global batch, and checkpoints that move between the two."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, cli, read_csv, read_metrics

pytestmark = pytest.mark.slow

RUN = ["trainer.max_epochs=2", "trainer.progress=false", "model.dropout=0", "dataset.batch_size=64"]


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
