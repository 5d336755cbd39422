"""Real processes, real signals: SIGTERM saves and exits promptly, kill -9 never corrupts last.ckpt."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli_main, make_config

from trainlab import checkpoint
from trainlab.run import train

# One-sample steps: enough per epoch (0.5 s or more) for a signal to land in the middle of one.
STEPS = 1000
RUN = ("dataset.batch_size=1", f"trainer.limit_batches={STEPS}", "trainer.max_epochs=2", "trainer.progress=false")


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "the run ended early"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_exits_and_the_printed_command_resumes_it(tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "out.txt"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *RUN, f"hydra.run.dir={run_dir}"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        last = run_dir / "checkpoints" / "last.ckpt"
        wait_for(run_dir / "checkpoints" / "best.ckpt", process)  # written after last.ckpt: epoch 2 starts
        time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = process.wait(timeout=30)
    assert time.monotonic() - sent < 10
    assert code == 128 + signal.SIGTERM

    state = checkpoint.load(last)
    assert state["epoch"] == 1 and 0 < state["batch_in_epoch"] < STEPS, "stopped mid-epoch 2"
    output = log.read_text()
    assert "SIGTERM received" in output and "Traceback" not in output
    resume = output.split("Resume with: ")[1].splitlines()[0]
    assert resume.endswith(f"ckpt_path={last}")

    resumed = tmp_path / "resumed"
    code, stderr = cli_main(*shlex.split(resume)[1:], f"hydra.run.dir={resumed}")
    assert code == 0, stderr
    straight = tmp_path / "straight"
    train(make_config(*RUN), straight)
    final = [checkpoint.load(run / "checkpoints" / "last.ckpt")["model"] for run in (straight, resumed)]
    for name, weights in final[0].items():
        assert torch.equal(weights, final[1][name]), name


WRITER = """
import sys, torch
from trainlab import checkpoint
for i in range(1_000_000):
    checkpoint.save({"step": i, "weights": torch.full((4_000_000,), float(i))}, sys.argv[1])
    print(i, flush=True)
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_readable(tmp_path):
    """A process saving 16 MB checkpoints in a loop is SIGKILLed while a write is in progress (its partial
    temporary file is left behind): last.ckpt is still a complete, consistent checkpoint."""
    last = tmp_path / "last.ckpt"
    for _attempt in range(5):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(last)], stdout=subprocess.PIPE, text=True)
        writer.stdout.readline()  # one save done; the next is in progress almost all the time
        time.sleep(0.05)
        writer.kill()
        writer.wait()
        state = checkpoint.load(last)
        assert torch.equal(state["weights"], torch.full((4_000_000,), float(state["step"])))
        partial = list(tmp_path.glob(".last.ckpt.*.tmp"))
        if partial:
            break
    assert partial, "no kill landed during a write"
