"""Exact resume: a run stopped after k epochs (or in the middle of one) and continued with ``ckpt_path=``
ends with the same bits as a run that was never stopped, and logs to TensorBoard as its continuation."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

import pytest
import torch
from conftest import QUIET, cli_main, make_config, read_csv, read_metrics, scalars, signal_at

from trainlab import checkpoint
from trainlab.dataloader import TensorData
from trainlab.preemption import Interrupted
from trainlab.run import train

# Dropout draws from the RNG and the scheduler has state: both must be restored for the bits to match. The
# learning rate grows 16x per epoch, so that the best epoch (by val/loss) is the 2nd: a run resumed after it
# must still test the best weights, which it did not compute itself.
RUN = ("model.dropout=0.2", "scheduler=exponential", "scheduler.gamma=16", "trainer.precision=32")


def assert_same_tensors(a, b, where: str = "") -> None:
    """``a`` and ``b`` are equal nested containers whose tensors are bitwise equal."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def final_state(run_dir: Path, name: str = "last.ckpt") -> dict:
    state = checkpoint.load(run_dir / "checkpoints" / name)
    return {key: state[key] for key in ("model", "optimizer", "scheduler", "scaler", "rng", "global_step")}


def metrics(run_dir: Path) -> dict:
    """metrics.json without the wall time, which differs between runs that are otherwise identical."""
    values = read_metrics(run_dir)
    values.pop("wall_time_s")
    return values


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """4 epochs straight; 2 epochs, then resumed to 4; and the 4 epochs once more."""
    root = tmp_path_factory.mktemp("resume")
    dirs = {name: root / name for name in ("straight", "first_half", "resumed", "again")}
    train(make_config(*RUN, "trainer.max_epochs=4"), dirs["straight"])
    train(make_config(*RUN, "trainer.max_epochs=2"), dirs["first_half"])
    last = dirs["first_half"] / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    train(make_config(*RUN, "trainer.max_epochs=4", f"ckpt_path={last}"), dirs["resumed"])
    assert last.read_bytes() == before, "resuming must not touch the run it continues"
    train(make_config(*RUN, "trainer.max_epochs=4"), dirs["again"])
    return dirs


def test_resumed_run_is_bitwise_identical_to_an_uninterrupted_one(runs):
    assert_same_tensors(final_state(runs["straight"]), final_state(runs["resumed"]))
    assert_same_tensors(final_state(runs["straight"], "best.ckpt"), final_state(runs["resumed"], "best.ckpt"))
    assert metrics(runs["resumed"]) == metrics(runs["straight"])
    assert metrics(runs["straight"])["best_epoch"] == 2, "the scenario needs the best epoch before the resume"
    assert metrics(runs["resumed"])["test/acc"] > 0.8


def test_two_runs_with_the_same_seed_are_bitwise_identical(runs):
    assert_same_tensors(final_state(runs["straight"]), final_state(runs["again"]))
    assert metrics(runs["again"]) == metrics(runs["straight"])


def test_resumed_run_logs_to_tensorboard_as_a_continuation(runs):
    straight, first, resumed = (scalars(runs[name]) for name in ("straight", "first_half", "resumed"))
    resume_step = checkpoint.load(runs["first_half"] / "checkpoints" / "last.ckpt")["global_step"]
    assert resume_step > 0
    for tag, points in resumed.items():
        assert min(step for step, _ in points) > resume_step, f"{tag} restarted its steps"
        if tag.startswith("test/"):  # each run tests once, at its end
            assert points == straight[tag]
        else:
            assert first.get(tag, []) + points == straight[tag], tag
    assert len(resumed["val/loss"]) == 2, "epochs 3 and 4"


def test_resume_from_the_checkpoint_alone_continues_the_same_run(runs, tmp_path, capfd):
    """Only ckpt_path and a longer trainer.max_epochs: the dropout and scheduler (today's defaults differ:
    dropout 0.1, no scheduler) and everything else come from the checkpoint."""
    last = runs["first_half"] / "checkpoints" / "last.ckpt"
    code, stderr = cli_main("train.py", f"ckpt_path={last}", "trainer.max_epochs=4", f"hydra.run.dir={tmp_path}")
    assert code == 0, stderr
    assert_same_tensors(final_state(runs["straight"]), final_state(tmp_path))
    assert_same_tensors(final_state(runs["straight"], "best.ckpt"), final_state(tmp_path, "best.ckpt"))
    assert metrics(tmp_path) == metrics(runs["straight"])
    assert f"this run continues {runs['first_half']} in {tmp_path}" in capfd.readouterr().out


def test_resume_from_a_best_checkpoint_says_where_it_goes_on_from(runs, tmp_path, capfd):
    best = runs["straight"] / "checkpoints" / "best.ckpt"  # epoch 2 of 4
    code, stderr = cli_main("train.py", f"ckpt_path={best}", "trainer.max_epochs=3", f"hydra.run.dir={tmp_path}")
    assert code == 0, stderr
    assert "from best.ckpt (epoch 2, step 42), not the last.ckpt of its run" in capfd.readouterr().out
    assert metrics(tmp_path)["epochs"] == 3


@pytest.mark.parametrize(
    ("signum", "signal_batch", "saved_at"),
    [(signal.SIGTERM, 5, (1, 6)), (signal.SIGTERM, -1, (2, 0)), (signal.SIGINT, 5, (1, 6))],
    ids=["SIGTERM-mid-epoch", "SIGTERM-last-batch-of-epoch", "SIGINT-mid-epoch"],
)
def test_signal_during_an_epoch_then_resume_continues_the_same_data_order(
    runs, train_run, monkeypatch, signum, signal_batch, saved_at
):
    """A signal arrives while epoch 2 trains on batch ``signal_batch``: the step finishes, last.ckpt is written
    (mid-epoch, or at the epoch's end when it was its last batch) and resuming finishes the same run."""
    monkeypatch.setattr(TensorData, "train_batches", signal_at(epoch=1, batch=signal_batch, signum=signum))
    with pytest.raises(Interrupted) as interrupted:
        train_run(*RUN, "trainer.max_epochs=4")
    monkeypatch.undo()
    assert interrupted.value.exit_code == 128 + signum
    state = checkpoint.load(interrupted.value.ckpt_path)
    assert (state["epoch"], state["batch_in_epoch"]) == saved_at

    run_dir, _ = train_run(*RUN, "trainer.max_epochs=4", f"ckpt_path={interrupted.value.ckpt_path}")
    assert_same_tensors(final_state(runs["straight"]), final_state(run_dir))
    assert metrics(run_dir) == metrics(runs["straight"])
    # what the resumed run logs, the interrupted epoch's train/loss included, is the straight run's tail
    straight = scalars(runs["straight"])
    for tag, points in scalars(run_dir).items():
        assert points == straight[tag][-len(points) :], tag


def test_a_bf16_run_stopped_mid_epoch_resumes_bitwise_in_bf16(train_run, monkeypatch):
    """Exact resume holds within a precision: in bf16 autocast, a run stopped by SIGTERM in the middle of
    epoch 2 (its pending training outputs in bf16 saved with it) and resumed ends as the run never stopped."""
    bf16 = (*RUN[:-1], "trainer.precision=bf16", "trainer.max_epochs=3")
    straight_dir, straight = train_run(*bf16)
    monkeypatch.setattr(TensorData, "train_batches", signal_at(epoch=1, batch=5, signum=signal.SIGTERM))
    with pytest.raises(Interrupted) as interrupted:
        train_run(*bf16)
    monkeypatch.undo()
    state = checkpoint.load(interrupted.value.ckpt_path)
    assert state["batch_in_epoch"] == 6 and state["train_metrics"]["outputs"][0].dtype == torch.bfloat16
    run_dir, resumed = train_run(*bf16, f"ckpt_path={interrupted.value.ckpt_path}")
    assert_same_tensors(final_state(straight_dir), final_state(run_dir))
    straight.pop("wall_time_s"), resumed.pop("wall_time_s")
    assert resumed == straight


def test_early_stopping_stops_after_patience_epochs_without_improvement(train_run):
    """min_delta larger than any change: only epoch 1 improves, so patience=2 stops after epoch 3."""
    stopping = ("callbacks.early_stopping.patience=2", "callbacks.early_stopping.min_delta=1e9")
    _, result = train_run(*stopping, "trainer.max_epochs=10")
    assert result["epochs"] == 3

    # stopped after 2 epochs and resumed: the early-stopping state travels in the checkpoint
    first_dir, _ = train_run(*stopping, "trainer.max_epochs=2")
    _, resumed = train_run(*stopping, "trainer.max_epochs=10", f"ckpt_path={first_dir}/checkpoints/last.ckpt")
    assert resumed["epochs"] == 3


def test_signal_stops_a_whole_sweep(tmp_path, monkeypatch):
    """SIGTERM during the first job of a multirun: that job saves and the sweep exits, starting no other."""
    monkeypatch.setattr(TensorData, "train_batches", signal_at(epoch=0, batch=3, signum=signal.SIGTERM))
    code, _ = cli_main(
        "train.py", "-m", "optimizer.lr=0.001,0.002", "trainer.max_epochs=2", f"hydra.sweep.dir={tmp_path}", QUIET
    )
    assert code == 128 + signal.SIGTERM
    (first_job,) = tmp_path.glob("0_*")  # job dirs are <num>_<overrides>
    assert checkpoint.load(first_job / "checkpoints" / "last.ckpt")["batch_in_epoch"] == 4
    assert not list(tmp_path.glob("1_*"))


def test_the_same_command_again_continues_its_run_in_its_run_dir(runs, tmp_path, monkeypatch, capfd):
    """``ckpt_path=auto`` in a SLURM job (its id names the run): SIGTERM as epoch 2 ends (its metrics are
    logged at the step the checkpoint holds), then the same command goes on in the same run dir, and the run
    ends as the uninterrupted one, with the same TensorBoard points (none twice, none lost) and CSV rows."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    command = ("train.py", *RUN, "trainer.max_epochs=4", "ckpt_path=auto", "logger=[tensorboard,csv]", QUIET)
    uninterrupted = TensorData.train_batches
    monkeypatch.setattr(TensorData, "train_batches", signal_at(epoch=1, batch=-1, signum=signal.SIGTERM))
    code, stderr = cli_main(*command)
    assert code == 128 + signal.SIGTERM, stderr
    assert f"Resume with: {shlex.join(['python', *command])}\n" in capfd.readouterr().out  # the same command
    monkeypatch.setattr(TensorData, "train_batches", uninterrupted)
    code, stderr = cli_main(*command)
    assert code == 0, stderr

    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("outputs/*/*")] == ["outputs/runs/4242"]
    run_dir = tmp_path / "outputs" / "runs" / "4242"
    assert_same_tensors(final_state(runs["straight"]), final_state(run_dir))
    assert metrics(run_dir) == metrics(runs["straight"])
    assert scalars(run_dir) == scalars(runs["straight"])
    rows = read_csv(run_dir / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4", "4"]  # 4 epochs, then the test


def test_auto_resume_needs_a_run_name_and_a_named_run_is_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    code, stderr = cli_main("train.py", "ckpt_path=auto", QUIET)
    assert code == 1
    assert (
        stderr.startswith("error: ckpt_path=auto continues the run that run_id names") and stderr.count("\n") == 1
    )

    code, stderr = cli_main("train.py", "run_id=first", "trainer.max_epochs=1", QUIET)
    assert code == 0, stderr
    last = tmp_path / "outputs" / "runs" / "first" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    code, stderr = cli_main("train.py", "run_id=first", "trainer.max_epochs=1", QUIET)
    assert code == 1
    assert (
        stderr
        == f"error: run first already exists ({last}); continue it with ckpt_path=auto, or choose another run_id\n"
    )
    assert last.read_bytes() == before

    # continued with ckpt_path=auto (and trained longer): in place
    code, stderr = cli_main("train.py", "run_id=first", "ckpt_path=auto", "trainer.max_epochs=2", QUIET)
    assert code == 0, stderr
    assert read_metrics(last.parents[1])["epochs"] == 2
