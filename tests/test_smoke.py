"""The default run, end to end through the real command line."""

import json

from conftest import cli, read_metrics


def test_default_run_reaches_accuracy_and_predict_agrees(tmp_path):
    run_dir = tmp_path / "run"
    done = cli("train.py", f"hydra.run.dir={run_dir}", "trainer.progress=false")
    assert done.returncode == 0, done.stderr
    metrics = read_metrics(run_dir)
    assert metrics["test/acc"] >= 0.95
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    out = tmp_path / "predict.json"
    done = cli("predict.py", f"ckpt={run_dir}/checkpoints/best.ckpt", f"output={out}")
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["test/acc"] == metrics["test/acc"]
