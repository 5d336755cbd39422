"""``logger=mlflow`` with the real MLflow on a real SQLite store, read back with MLflow's own client: a run's
parameters, metrics per epoch and of the test, tags and artifacts; a sweep as one experiment with its repeats
tagged by group; a run stopped by SIGTERM and continued by the same command as one MLflow run; and the one-line
error where MLflow is not installed."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import mlflow
import onnxruntime
import pytest
import yaml
from conftest import QUIET, assert_same_weights, cli, cli_main, make_config, read_metrics, scalars, signal_at
from mlflow import MlflowClient

from trainlab import checkpoint
from trainlab.dataloader import TensorData
from trainlab.outputs import flat_hparams
from trainlab.run import train


def runs_in(store: Path) -> list:
    """Every run of the SQLite store ``store``, found by MLflow's own search (a pandas DataFrame's rows)."""
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    try:
        return [row for _, row in mlflow.search_runs(search_all_experiments=True).iterrows()]
    finally:
        mlflow.set_tracking_uri(None)


def history(store: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(f"sqlite:///{store}").get_metric_history(run_id, key)]


def artifact(row, path: str) -> Path:
    """An artifact of a run in a SQLite store: a file under the store's ``mlartifacts/``."""
    return Path(row.artifact_uri.removeprefix("file://")) / path


def test_a_run_reads_back_in_mlflow_with_every_epoch_and_the_test_metrics(tmp_path):
    """The plain command: the store is outputs/mlflow.db, the artifacts beside it."""
    done = cli("train.py", QUIET, "trainer.max_epochs=3", "logger=[tensorboard,mlflow]", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    outputs = tmp_path / "outputs"
    (run_dir,) = [p.parent for p in outputs.rglob("metrics.json") if "mlartifacts" not in p.parts]
    (run,) = runs_in(outputs / "mlflow.db")
    assert run.status == "FINISHED" and run.artifact_uri.startswith((outputs / "mlartifacts").as_uri())
    assert (run["tags.mlflow.runName"], run["tags.model"], run["tags.dataset"]) == (run_dir.name, "MLP", "Digits")
    expected = {key: str(value) for key, value in flat_hparams(make_config("trainer.max_epochs=3")).items()}
    assert {key.removeprefix("params."): run[key] for key in run.index if key.startswith("params.")} == expected

    store, tensorboard, results = outputs / "mlflow.db", scalars(run_dir), read_metrics(run_dir)
    val_loss = history(store, run.run_id, "val/loss")
    assert [step for step, _ in val_loss] == [step for step, _ in tensorboard["val/loss"]]
    assert [value for _, value in val_loss] == pytest.approx([value for _, value in tensorboard["val/loss"]])
    assert [value for _, value in history(store, run.run_id, "epoch")] == [1, 2, 3]
    for name in ("test/acc", "test/loss"):
        assert history(store, run.run_id, name) == [(results["global_step"], pytest.approx(results[name]))]
        assert run[f"metrics.{name}"] == pytest.approx(results[name])

    saved = yaml.safe_load(checkpoint.load(run_dir / "checkpoints" / "last.ckpt")["config"])
    assert yaml.safe_load(artifact(run, "config.yaml").read_text()) == saved
    assert artifact(run, "metrics.json").read_text() == (run_dir / "metrics.json").read_text()
    for picture in ("inputs/train.png", "test/confusion_matrix.png", "test/misclassified.png"):
        assert artifact(run, picture).read_bytes().startswith(b"\x89PNG"), picture


@pytest.mark.filterwarnings("error::UserWarning")  # how Hydra reports a callback's error (the sweep's summary)
def test_a_sweep_is_one_experiment_and_its_repeats_are_tagged_with_their_group(tmp_path, monkeypatch):
    """Hydra's basic launcher, all jobs in one process: each gets its own MLflow run, named by its job dir
    (which the run-only settings, logger.mlflow.* included, do not name)."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlflow.db"
    code, stderr = cli_main(
        "train.py",
        "-m",
        "optimizer.lr=0.001,0.01",
        "seed=0,1",
        "trainer.max_epochs=1",
        "logger=mlflow",
        f"logger.mlflow.tracking_uri=sqlite:///{store}",
        "~callbacks.pictures",
        QUIET,
    )
    assert code == 0, stderr
    (sweep_dir,) = [p.parent for p in tmp_path.rglob("multirun.yaml")]
    runs = runs_in(store)
    client = MlflowClient(f"sqlite:///{store}")
    assert {client.get_experiment(run.experiment_id).name for run in runs} == {
        str(sweep_dir.relative_to(tmp_path))
    }
    jobs = sorted(p.name for p in sweep_dir.glob("[0-9]_*"))
    assert jobs == [
        f"{i}_optimizer.lr={lr},seed={seed},trainer.max_epochs=1"
        for i, (lr, seed) in enumerate([(0.001, 0), (0.001, 1), (0.01, 0), (0.01, 1)])
    ]
    assert sorted(run["tags.mlflow.runName"] for run in runs) == jobs
    assert {run["tags.sweep"] for run in runs} == {str(sweep_dir.relative_to(tmp_path))}
    groups = sorted((run["tags.group"], run["params.seed"]) for run in runs)
    assert groups == [  # without the run-only settings (logger, progress...)
        ("optimizer.lr=0.001 trainer.max_epochs=1", "0"),
        ("optimizer.lr=0.001 trainer.max_epochs=1", "1"),
        ("optimizer.lr=0.01 trainer.max_epochs=1", "0"),
        ("optimizer.lr=0.01 trainer.max_epochs=1", "1"),
    ]


def test_a_run_stopped_and_continued_by_the_same_command_is_one_mlflow_run(tmp_path, monkeypatch):
    """SIGTERM in epoch 2, then the same command with the same run_id: one run dir, one MLflow run whose
    points are TensorBoard's (none twice: every step is logged, the one the checkpoint holds included), and
    the weights of an uninterrupted run."""
    monkeypatch.chdir(tmp_path)
    run = ("trainer.max_epochs=3", "trainer.log_every_n_steps=1", "model.dropout=0.2")
    command = ("train.py", *run, "logger=[tensorboard,mlflow]", "run_id=preempted", "ckpt_path=auto", QUIET)
    uninterrupted = TensorData.train_batches
    monkeypatch.setattr(TensorData, "train_batches", signal_at(epoch=1, batch=5, signum=signal.SIGTERM))
    code, stderr = cli_main(*command)
    assert code == 128 + signal.SIGTERM, stderr
    outputs = tmp_path / "outputs"
    assert [run.status for run in runs_in(outputs / "mlflow.db")] == ["KILLED"]
    monkeypatch.setattr(TensorData, "train_batches", uninterrupted)
    code, stderr = cli_main(*command)
    assert code == 0, stderr

    assert sorted(p.name for p in outputs.iterdir()) == ["mlartifacts", "mlflow.db", "runs"]
    assert [p.name for p in (outputs / "runs").iterdir()] == ["preempted"]
    run_dir = outputs / "runs" / "preempted"
    (found,) = runs_in(outputs / "mlflow.db")
    assert found.status == "FINISHED" and found["tags.mlflow.runName"] == "preempted"
    for tag, points in scalars(run_dir).items():
        logged = history(outputs / "mlflow.db", found.run_id, tag)
        assert [step for step, _ in logged] == [step for step, _ in points], tag
        assert [value for _, value in logged] == pytest.approx([value for _, value in points]), tag
    assert len(history(outputs / "mlflow.db", found.run_id, "val/loss")) == 3

    train(make_config(*run), tmp_path / "straight")
    assert_same_weights(run_dir, tmp_path / "straight")


def test_the_best_checkpoint_and_its_onnx_export_as_artifacts(tmp_path):
    store, run_dir = tmp_path / "mlflow.db", tmp_path / "run"
    code, stderr = cli_main(
        "train.py",
        "trainer.max_epochs=1",
        "logger=mlflow",
        f"logger.mlflow.tracking_uri=sqlite:///{store}",
        "logger.mlflow.log_checkpoint=true",
        "logger.mlflow.log_onnx=true",
        f"hydra.run.dir={run_dir}",
        QUIET,
    )
    assert code == 0, stderr
    (run,) = runs_in(store)
    best = run_dir / "checkpoints" / "best.ckpt"
    assert artifact(run, "checkpoints/best.ckpt").read_bytes() == best.read_bytes()
    session = onnxruntime.InferenceSession(artifact(run, "onnx/best.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input"]


def test_logger_mlflow_without_mlflow_installed_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` finds where it is not installed
    code, stderr = cli_main("train.py", "logger=mlflow", f"hydra.run.dir={tmp_path}", QUIET)
    assert code == 1
    assert (
        stderr.splitlines()[-1]
        == 'error: logger=mlflow needs MLflow, an optional extra: pip install -e ".[mlflow]"'
    )
    assert "Traceback" not in stderr
    assert not (tmp_path / "checkpoints").exists()
