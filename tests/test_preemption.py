"""Real processes, real signals: SIGTERM saves and exits promptly, kill -9 never corrupts last.ckpt."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, assert_same_weights, cli_main, make_config

from trainlab import checkpoint
from trainlab.callbacks import Callback
from trainlab.cli import run_job
from trainlab.run import train

# One-sample steps: each epoch takes 0.5 s or more, so a signal sent when epoch 1 ends lands during epoch 2
# (or 3, if the test process is slow to send it), long before the run's final step.
STEPS = 1000
RUN = ("dataset.batch_size=1", f"trainer.limit_batches={STEPS}", "trainer.max_epochs=3", "trainer.progress=false")


@pytest.mark.slow
def test_sigterm_saves_exits_and_the_printed_command_resumes_the_run(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *RUN, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    for line in process.stdout:  # the run's log, as it writes it
        output.append(line)
        if "epoch 1/3:" in line:
            break
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    output += process.stdout
    code = process.wait()
    assert time.monotonic() - sent < 10, "the run did not stop promptly"
    assert code == 128 + signal.SIGTERM, "".join(output)

    last = run_dir / "checkpoints" / "last.ckpt"
    state = checkpoint.load(last)
    assert 1 <= state["epoch"] < 3 and state["batch_in_epoch"] < STEPS
    output = "".join(output)
    assert "SIGTERM received" in output and "Traceback" not in output
    resume = output.split("Resume with: ")[1].splitlines()[0]
    assert shlex.split(resume) == ["python", "train.py", f"ckpt_path={last}"]  # the checkpoint holds the config

    resumed = tmp_path / "resumed"
    code, stderr = cli_main(*shlex.split(resume)[1:], f"hydra.run.dir={resumed}")
    assert code == 0, stderr
    train(make_config(*RUN), tmp_path / "straight")
    assert_same_weights(resumed, tmp_path / "straight")


class CtrlCInTheTest(Callback):
    """Ctrl-C as the run's test begins: after its last training step, when there is nothing left to stop."""

    def on_test_batch_end(self, context, x, y, outputs) -> None:
        if not hasattr(self, "sent"):
            self.sent = True
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_as_a_run_finishes_lets_it_finish_and_stops_the_next_run_of_the_sweep(tmp_path):
    """As in a sweep's process (Hydra's basic launcher): the signal is not lost with the finished run."""
    cfg = make_config("trainer.max_epochs=1", f"+callbacks.ctrl_c._target_={__name__}.CtrlCInTheTest")
    finished = run_job(lambda: train(cfg, tmp_path / "finishing"))
    assert (tmp_path / "finishing" / "metrics.json").is_file() and "test/acc" in finished
    with pytest.raises(SystemExit) as stopped:
        run_job(lambda: train(make_config(), tmp_path / "next"))
    assert stopped.value.code == 128 + signal.SIGINT
    assert not (tmp_path / "next").exists()
    assert run_job(lambda: "ran") == "ran"  # the signal stopped one run, not every later one


# Saves a checkpoint, then starts another whose state holds an object that, as torch.save pickles it, says
# so and waits: the second save is stopped between creating its temporary file and the rename.
WRITER = """
import signal, sys, torch
from trainlab import checkpoint
from trainlab.callbacks import Callback
from trainlab.cli import run_job

class Stall:
    def __reduce__(self):
        print("writing", flush=True)
        signal.pause()

checkpoint.save({"step": 0, "weights": torch.zeros(4_000_000)}, sys.argv[1])
checkpoint.save({"step": 1, "weights": torch.ones(4_000_000), "stall": Stall()}, sys.argv[1])
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_readable(tmp_path):
    """A process SIGKILLed in the middle of saving a checkpoint (its temporary file is left behind): last.ckpt
    is still the previous, complete checkpoint."""
    last = tmp_path / "last.ckpt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(last)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"
    writer.kill()
    writer.wait()
    state = checkpoint.load(last)
    assert state["step"] == 0 and torch.equal(state["weights"], torch.zeros(4_000_000))
    assert list(tmp_path.glob(".last.ckpt.*.tmp")), "the interrupted write left no temporary file"
