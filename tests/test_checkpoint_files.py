"""Checkpoint files as their users see them: readable by whom the umask says, and carrying the run's test
metrics, so that a copy of best.ckpt alone shows them (predict's and serve's /metadata, the exported ONNX)."""

from __future__ import annotations

import os
import shutil
import stat

import torch
from conftest import cli_main

from trainlab import checkpoint
from trainlab.inference import Predictor


def test_checkpoint_files_honour_the_umask(tmp_path):
    modes = {}
    for umask in (0o022, 0o077, 0o002):
        previous = os.umask(umask)
        try:
            checkpoint.save({"step": 1}, tmp_path / f"{umask:o}.ckpt")
        finally:
            os.umask(previous)
        modes[umask] = stat.S_IMODE((tmp_path / f"{umask:o}.ckpt").stat().st_mode)
    assert modes == {0o022: 0o644, 0o077: 0o600, 0o002: 0o664}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.ckpt", "22.ckpt", "77.ckpt"]  # no temporary left


def test_a_copy_of_best_ckpt_alone_carries_the_test_metrics(train_run, tmp_path):
    """One epoch: best.ckpt was a hard link to last.ckpt when the test ran. The metrics go into best.ckpt
    (a new file under its name), last.ckpt stays as it was."""
    run_dir, results = train_run("trainer.max_epochs=1")
    expected = {key: value for key, value in results.items() if key.startswith("test/")}
    best, last = (checkpoint.load(run_dir / "checkpoints" / name) for name in ("best.ckpt", "last.ckpt"))
    assert best["test_metrics"] == expected and "test_metrics" not in last
    assert all(torch.equal(best["model"][key], last["model"][key]) for key in last["model"])

    alone = tmp_path / "elsewhere" / "model.ckpt"
    alone.parent.mkdir()
    shutil.copy(run_dir / "checkpoints" / "best.ckpt", alone)
    assert Predictor.load(alone, "cpu").metadata()["test_metrics"] == expected
    code, stderr = cli_main("export.py", f"ckpt={alone}", f"output={tmp_path / 'model.onnx'}")
    assert code == 0, stderr
    assert Predictor.load(tmp_path / "model.onnx").metadata()["test_metrics"] == expected
