"""Loggers as plug-ins: ``logger=csv`` writes Lightning's ``metrics.csv`` alone, ``logger=[tensorboard,csv]``
both, read back with pandas and TensorBoard's own reader; callbacks get every batch, the test metrics and
the fit's end. (Under torchrun only rank 0 records: tests/test_ddp.py.)"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import QUIET, cli, make_config, read_metrics, scalar_values

from trainlab.callbacks import Callback
from trainlab.run import build


@pytest.mark.parametrize("loggers", ["csv", "[tensorboard,csv]"])
def test_csv_logger_writes_a_row_per_epoch_and_the_test_metrics(tmp_path, loggers):
    run_dir = tmp_path / "run"
    done = cli("train.py", QUIET, "trainer.max_epochs=3", f"logger={loggers}", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(run_dir / "metrics.csv")
    epochs, test = table[table["val/loss"].notna()], table[table["test/acc"].notna()]
    assert epochs["epoch"].tolist() == [1, 2, 3] and len(test) == 1
    metrics = read_metrics(run_dir)
    assert epochs["val/loss"].min() == pytest.approx(metrics["best_score"], rel=1e-6)
    assert test["test/acc"].item() == pytest.approx(metrics["test/acc"], rel=1e-6)
    assert epochs["step"].iloc[-1] == metrics["global_step"]
    if "tensorboard" in loggers:
        assert scalar_values(run_dir, "val/loss") == pytest.approx(epochs["val/loss"].tolist(), rel=1e-6)
    else:
        assert not (run_dir / "tensorboard").exists()


def test_no_logger_still_writes_the_runs_results(tmp_path):
    run_dir = tmp_path / "run"
    done = cli("train.py", QUIET, "trainer.max_epochs=1", "~logger", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "checkpoints", "metrics.json", "train.log"]


class Recorder(Callback):
    """Every hook it is called with, and what it was given."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.test_metrics: dict[str, float] = {}
        self.results: dict | None = None

    def on_train_batch_end(self, context, loss: torch.Tensor) -> None:
        self.losses.append(loss.item())

    def on_test_end(self, context, test) -> None:
        self.test_metrics = test.metrics

    def on_fit_end(self, context, results: dict) -> None:
        self.results = results


def test_callbacks_see_every_batch_the_test_metrics_and_the_end(tmp_path):
    cfg = make_config("trainer.max_epochs=2", "trainer.log_every_n_steps=1")
    run = build(cfg)
    run.trainer.callbacks["recorder"] = recorder = Recorder()
    results = run.fit(cfg, tmp_path)
    assert len(recorder.losses) == results["global_step"] == 2 * run.data.num_batches("train")
    assert recorder.losses == pytest.approx(scalar_values(tmp_path, "train/loss_step"), rel=1e-6)
    assert recorder.test_metrics == {k: v for k, v in results.items() if k.startswith("test/")}
    assert recorder.results == results == read_metrics(tmp_path)
