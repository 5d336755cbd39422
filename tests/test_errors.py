"""Bad input through the real command line: one clear line naming the problem and the fix, a non-zero exit,
no traceback, and nothing run or destroyed. Covers settings, data, checkpoints and divergence."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUIET, ROOT, cli_main, make_config
from omegaconf import OmegaConf

from trainlab import checkpoint
from trainlab.run import train


def assert_one_line_error(code: int, stderr: str, message: str) -> None:
    """Exit code 1 and exactly one ``error:`` line, containing ``message``, and no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1, stderr
    assert len(errors) == 1 and message in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """best.ckpt of a short digits (images) run and of an iris (table) run."""
    root = tmp_path_factory.mktemp("trained")
    train(make_config("trainer.max_epochs=1"), root / "digits")
    train(make_config("dataset=iris", "trainer.max_epochs=1"), root / "iris")
    return {name: root / name / "checkpoints" / "best.ckpt" for name in ("digits", "iris")}


# -- settings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=0"], "optimizer.lr must be a positive number, got 0; e.g. optimizer.lr=1e-3"),
        (["optimizer.lr=-0.1"], "optimizer.lr must be a positive number, got -0.1"),
        (["dataset.batch_size=0"], "dataset.batch_size must be a positive integer, got 0"),
        (["dataset.val_fraction=1"], "dataset.val_fraction must be in [0, 1), got 1"),
        (["dataset.val_fraction=-0.1"], "dataset.val_fraction must be in [0, 1), got -0.1"),
        (["dataset.batch_size=abc"], "dataset.batch_size must be a positive integer, got abc"),
        (["trainer.max_epochs=-1"], "trainer.max_epochs must be an integer >= 0, got -1"),
        (["trainer.max_epochs=ten"], "trainer.max_epochs must be an integer >= 0, got ten"),
        (["trainer.label_smoothing=1"], "trainer.label_smoothing must be in [0, 1), got 1"),
        (["+model.hiden_size=3"], "model.hiden_size is not a setting of MLP; its settings are hidden_sizes"),
        (["dataset=mnist", "dataset.name=MNIZT"], "dataset.name=MNIZT is not one of torchvision's data sets"),
    ],
    ids=[
        "lr=0",
        "lr<0",
        "batch_size=0",
        "val_fraction=1",
        "val_fraction<0",
        "batch_size=abc",
        "max_epochs<0",
        "max_epochs=ten",
        "label_smoothing=1",
        "model-setting-typo",
        "dataset-name-typo",
    ],
)
def test_bad_setting_is_one_line_naming_it(tmp_path, overrides, message):
    code, stderr = cli_main("train.py", *overrides, f"hydra.run.dir={tmp_path}", QUIET)
    assert_one_line_error(code, stderr, message)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=gpt", "Could not find 'model/gpt'"),
        ("trainer.max_epoch=3", "Could not override 'trainer.max_epoch'"),
    ],
    ids=["unknown-option", "unknown-key"],
)
def test_unknown_option_or_key_gets_hydras_message(tmp_path, override, message):
    code, stderr = cli_main("train.py", override, f"hydra.run.dir={tmp_path}")
    assert code == 1
    assert message in stderr and "Traceback" not in stderr


def test_traceback_on_request(tmp_path, monkeypatch):
    code, stderr = cli_main("train.py", "optimizer.lr=0", "debug_errors=true", f"hydra.run.dir={tmp_path}")
    assert code == 1 and "Traceback" in stderr and "optimizer.lr must be a positive number" in stderr
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # Hydra then lets the exception out: Python prints it all
    with pytest.raises(ValueError, match=r"optimizer\.lr must be a positive number"):
        cli_main("train.py", "optimizer.lr=0", f"hydra.run.dir={tmp_path}")


# -- data ----------------------------------------------------------------------------------------------
def test_data_folder_without_data_and_no_network(tmp_path, monkeypatch):
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):  # no network: nothing listens
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    empty = tmp_path / "data"
    empty.mkdir()
    code, stderr = cli_main(
        "train.py", "dataset=mnist", f"paths.data_dir={empty}", f"hydra.run.dir={tmp_path}/run"
    )
    assert_one_line_error(code, stderr, f"MNIST files not found under {empty}")
    assert "point paths.data_dir at a folder that has them" in stderr


def test_predict_input_of_the_wrong_shape(trained, tmp_path):
    three_columns = tmp_path / "three.csv"
    three_columns.write_text("a,b,c\n1,2,3\n")
    code, stderr = cli_main("predict.py", f"ckpt={trained['iris']}", f"input={three_columns}")
    assert_one_line_error(code, stderr, "has 3 feature columns (a, b, c) but the model expects 4")

    code, stderr = cli_main("predict.py", f"ckpt={trained['digits']}", f"input={three_columns}")
    assert_one_line_error(code, stderr, "three.csv is not an image")

    code, stderr = cli_main("predict.py", f"ckpt={trained['digits']}", f"input={tmp_path / 'nothing.png'}")
    assert_one_line_error(code, stderr, "nothing.png does not exist")


# -- checkpoints ---------------------------------------------------------------------------------------
class CreatesFile:
    """Unpickling this object would create ``path``: what a malicious checkpoint does."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def bad_checkpoints(good: Path, folder: Path, payload: Path) -> dict[str, Path]:
    """One file per way a checkpoint can be bad."""
    state = checkpoint.load(good)
    files = {name: folder / f"{name}.ckpt" for name in ("missing", "truncated", "not_trainlab", "text")}
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save(state["model"], files["not_trainlab"])
    files["text"].write_text("model: mlp\n")
    files["evil_torch"] = folder / "evil_torch.ckpt"
    torch.save({**state, "model": CreatesFile(payload)}, files["evil_torch"])
    files["evil_pickle"] = folder / "evil_pickle.ckpt"
    files["evil_pickle"].write_bytes(pickle.dumps(CreatesFile(payload)))
    files["evil_config"] = folder / "evil_config.ckpt"  # a clean pickle whose config names other code
    config = OmegaConf.create(state["config"])
    config.model = {"_target_": "builtins.open", "file": str(payload), "mode": "w"}
    checkpoint.save({**state, "config": OmegaConf.to_yaml(config)}, files["evil_config"])
    return files


MESSAGES = {
    "missing": "does not exist; pass a run's checkpoints/last.ckpt or best.ckpt",
    "truncated": "is truncated or corrupt (PytorchStreamReader failed reading zip archive",
    "not_trainlab": "is a torch file but not a trainlab checkpoint",
    "text": "is not a trainlab checkpoint (not a file written by torch.save)",
    "evil_torch": "it holds io.open, not only tensors and plain data, so it could run code; nothing in it was run",
    "evil_pickle": "is not a trainlab checkpoint (a bare pickle, which could run code: refused without reading it)",
    "evil_config": "its config names model class builtins.open",
}


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_bad_checkpoint_for_predict_gets_its_own_message_and_runs_nothing(trained, tmp_path, kind):
    payload = tmp_path / "payload_ran"
    bad = bad_checkpoints(trained["digits"], tmp_path, payload)[kind]
    code, stderr = cli_main("predict.py", f"ckpt={bad}")
    assert_one_line_error(code, stderr, MESSAGES[kind])
    assert not payload.exists()


@pytest.mark.parametrize("kind", ["truncated", "evil_torch", "evil_pickle", "evil_config"])
def test_bad_checkpoint_to_resume_from_is_refused(trained, tmp_path, kind):
    payload = tmp_path / "payload_ran"
    bad = bad_checkpoints(trained["digits"], tmp_path, payload)[kind]
    code, stderr = cli_main("train.py", f"ckpt_path={bad}", f"hydra.run.dir={tmp_path}/run", QUIET)
    assert_one_line_error(code, stderr, MESSAGES[kind])
    assert not payload.exists()


@pytest.mark.parametrize(
    ("override", "trained_with"),
    [
        ("optimizer=sgd", "optimizer._target_=torch.optim.Adam"),
        ("model=cnn", "model._target_=trainlab.model.MLP"),
        ("dataset=wine", "dataset._target_=trainlab.dataloader.Digits"),
        ("trainer.monitor=val/acc", "trainer.monitor=val/loss"),
        ("seed=1", "seed=42"),
        ("experiment=mnist_cnn", None),
    ],
)
def test_resume_with_a_setting_the_saved_state_depends_on_is_refused_and_changes_nothing(
    trained, tmp_path, override, trained_with
):
    run_dir = trained["digits"].parent.parent
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    code, stderr = cli_main("train.py", override, f"ckpt_path={trained['digits']}", f"hydra.run.dir={tmp_path}")
    expected = f"the checkpoint was trained with {trained_with}" if trained_with else "it changes several settings"
    assert_one_line_error(code, stderr, f"cannot resume with {override}: {expected}")
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before
    assert not (tmp_path / "checkpoints").exists()


# A run that resumes into its own run dir with files limited to 300 kB (checkpoints are 630 kB, the others
# far smaller): the first checkpoint it writes fails as on a full disk. SIGXFSZ ignored (as Python does at
# start anyway), so that the write fails with EFBIG instead of the signal killing the process.
LIMITED_FILES = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_checkpoint_write_that_fails_stops_the_run_and_keeps_the_previous_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    train(make_config("trainer.max_epochs=1"), run_dir)
    folder = run_dir / "checkpoints"
    before = {name: (folder / name).read_bytes() for name in ("last.ckpt", "best.ckpt")}
    resume = [f"ckpt_path={folder / 'last.ckpt'}", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(
        [sys.executable, "-c", LIMITED_FILES, str(ROOT / "train.py"), *resume],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(done.returncode, done.stderr, f"could not write last.ckpt in {folder}: File too large")
    assert sorted(path.name for path in folder.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temporary file left
    for name, data in before.items():
        assert (folder / name).read_bytes() == data
        assert checkpoint.load(folder / name)["epoch"] == 1


# -- divergence ----------------------------------------------------------------------------------------
def test_diverging_run_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    """The learning rate grows 10^30-fold after epoch 1: epoch 2's loss becomes NaN."""
    code, stderr = cli_main(
        "train.py",
        "scheduler=exponential",
        "scheduler.gamma=1e30",
        "trainer.max_epochs=3",
        f"hydra.run.dir={tmp_path}",
        QUIET,
    )
    assert_one_line_error(
        code, stderr, "the training loss became nan at epoch 2, step 42; the last good checkpoint"
    )
    assert "Lower optimizer.lr" in stderr
    for name in ("last.ckpt", "best.ckpt"):
        state = checkpoint.load(tmp_path / "checkpoints" / name)
        assert state["epoch"] == 1
        assert all(torch.isfinite(weights).all() for weights in state["model"].values())
    assert not (tmp_path / "metrics.json").exists()
