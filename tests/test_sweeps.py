"""Multiruns through the real command line: grids with their summary, a failing job, joblib, Optuna searches
(resumed, pruned) and the SLURM launcher's config. Every job is a 1-epoch run of a few batches on digits."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import torch
from conftest import CONF, ROOT, cli
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf
from optuna.trial import TrialState
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata as hparams_metadata

TINY = ("debug=fast", "trainer.progress=false")  # 1 epoch of 5 batches


def summary_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv") as file:
        return list(csv.DictReader(file))


def study_in(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="mlp_digits", storage=f"sqlite:///{sweep_dir}/optuna.db")


def completed_trials(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    if not (sweep_dir / "optuna.db").exists():
        return []
    try:
        return study_in(sweep_dir).get_trials(states=(TrialState.COMPLETE,))
    except KeyError:  # the study is not created yet
        return []


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory) -> dict:
    """A 4-job grid and a 2-job sweep whose second job diverges, started together from one folder with the
    default (timestamped) sweep dir."""
    cwd = tmp_path_factory.mktemp("sweeps")
    grid = ("-m", "optimizer.lr=0.001,0.01", "dataset.batch_size=32,64", *TINY)
    failing = ("-m", "optimizer.lr=0.001,1e12", *TINY)
    with ThreadPoolExecutor(2) as pool:
        grid_done, failing_done = pool.map(lambda args: cli("train.py", *args, cwd=cwd), (grid, failing))
    sweep_dirs = sorted(path.parent for path in cwd.glob("outputs/multirun/*/*/multirun.yaml"))
    by_jobs = {len(list(d.glob("*/.hydra"))): d for d in sweep_dirs}
    return {
        "sweep_dirs": sweep_dirs,
        "grid": (grid_done, by_jobs.get(4)),
        "failing": (failing_done, by_jobs.get(2)),
    }


def test_sweeps_started_together_get_their_own_dirs(two_sweeps):
    assert len(two_sweeps["sweep_dirs"]) == 2


def test_grid_writes_a_run_per_job_and_a_summary_ranked_by_the_monitor(two_sweeps):
    done, sweep_dir = two_sweeps["grid"]
    assert done.returncode == 0, done.stderr
    run_dirs = sorted(path.parent for path in sweep_dir.glob("*/metrics.json"))
    assert len(run_dirs) == 4
    for run_dir in run_dirs:
        assert (run_dir / "checkpoints" / "best.ckpt").is_file()

    rows = summary_rows(sweep_dir)
    assert [row["status"] for row in rows] == ["ok"] * 4
    scores = [float(row["val/loss"]) for row in rows]
    assert scores == sorted(scores)  # val/loss: lower is better
    for row in rows:  # each row holds its own run's figures
        metrics = json.loads((sweep_dir / row["run_dir"] / "metrics.json").read_text())
        assert float(row["val/loss"]) == metrics["best_score"]
        assert float(row["test/acc"]) == metrics["test/acc"]
    assert {tuple(sorted(row["overrides"].split()[:2])) for row in rows} == {
        (f"dataset.batch_size={batch}", f"optimizer.lr={lr}") for lr in ("0.001", "0.01") for batch in (32, 64)
    }
    assert len((sweep_dir / "summary.md").read_text().splitlines()) == 4 + 6  # title, common overrides, table
    assert "ranked by val/loss (min)" in done.stderr


def test_grid_runs_are_told_apart_in_tensorboard_hparams(two_sweeps):
    _, sweep_dir = two_sweeps["grid"]
    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep_dir))
    runs.Reload()
    sessions = {}
    for run, tags in runs.PluginRunToTagToContent(hparams_metadata.PLUGIN_NAME).items():
        info = hparams_metadata.parse_session_start_info_plugin_data(tags[hparams_metadata.SESSION_START_INFO_TAG])
        lr, batch = info.hparams["optimizer.lr"].number_value, info.hparams["dataset.batch_size"].number_value
        sessions[(lr, batch)] = run
        assert f"optimizer.lr={lr:g}" in run and f"dataset.batch_size={batch:g}" in run  # named by its overrides
    assert set(sessions) == {(lr, batch) for lr in (0.001, 0.01) for batch in (32, 64)}


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(two_sweeps):
    done, sweep_dir = two_sweeps["failing"]
    assert done.returncode != 0
    good, diverged = summary_rows(sweep_dir)
    assert good["status"] == "ok" and "optimizer.lr=0.001" in good["overrides"]
    assert (sweep_dir / good["run_dir"] / "metrics.json").is_file()
    assert diverged["status"] == "failed" and "optimizer.lr=1000000000000.0" in diverged["overrides"]
    assert diverged["error"].startswith("TrainingError: the training loss became nan")
    assert diverged["val/loss"] == ""


@pytest.mark.slow
def test_optuna_search_interrupted_and_resumed_continues_its_study(tmp_path):
    """Ctrl-C as the third trial of a long search starts its run, and again as each later one starts: a signal
    during a trial's final test lets that trial finish, and the next one is then interrupted."""
    sweep_dir = tmp_path / "search"
    command = [sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=100"]
    command += [f"hydra.sweep.dir={sweep_dir}", *TINY]
    search = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, runs_started = [], 0
    for line in search.stdout:  # the search's log, as it writes it
        output.append(line)
        if "][trainlab.run][INFO] - model " in line:
            runs_started += 1
            if runs_started >= 3:
                search.send_signal(signal.SIGINT)
    assert search.wait() != 0, "".join(output)
    first_trials = completed_trials(sweep_dir)
    assert 2 <= len(first_trials) < 100
    n_trials = len(first_trials) + 2

    done = cli("train.py", *command[2:4], f"hydra.sweeper.n_trials={n_trials}", *command[5:])
    assert done.returncode == 0, done.stderr
    assert (
        f"continuing study mlp_digits: {len(first_trials)} of {n_trials} trials done" in done.stdout + done.stderr
    )
    study = study_in(sweep_dir)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE  # trainer.monitor_mode=min
    completed = completed_trials(sweep_dir)
    assert len(completed) == n_trials
    assert completed[: len(first_trials)] == first_trials  # the same study, continued
    assert (
        len({tuple(trial.params.items()) for trial in completed}) == n_trials
    )  # the resumed sampler did not repeat
    assert all(trial.user_attrs.get("interrupted") for trial in study.trials if trial.state == TrialState.FAIL)

    ok_rows = [row for row in summary_rows(sweep_dir) if row["status"] == "ok"]
    assert [float(row["val/loss"]) for row in ok_rows] == sorted(trial.value for trial in completed)


@pytest.mark.slow
def test_optuna_prunes_trials_running_in_parallel_joblib_jobs(tmp_path):
    """A pruner that prunes any val/loss above 0.5 from epoch 2 on: both trials stop after their second of 3
    epochs, in joblib's worker processes, which report to the study through its storage."""
    sweep_dir = tmp_path / "search"
    done = cli(
        "train.py",
        "-m",
        "hparams_search=optuna",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        "~callbacks.optuna_pruning.pruner",
        "+callbacks.optuna_pruning.pruner={_target_:optuna.pruners.ThresholdPruner,upper:0.5,n_warmup_steps:2}",
        "trainer.max_epochs=3",
        "trainer.limit_batches=5",
        "trainer.progress=false",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert done.returncode == 0, done.stderr  # pruning is not a failure
    trials = study_in(sweep_dir).trials
    assert [trial.state for trial in trials] == [TrialState.PRUNED] * 2
    assert [list(trial.intermediate_values) for trial in trials] == [[1, 2], [1, 2]]  # reported every epoch
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["pruned"] * 2

    last_checkpoints = list(sweep_dir.glob("*/checkpoints/last.ckpt"))
    assert len(last_checkpoints) == 2
    for last in last_checkpoints:
        state = torch.load(last, weights_only=True)
        assert state["epoch"] == 1  # stopped during epoch 2, before its checkpoint
        threads = OmegaConf.create(state["config"]).trainer.num_threads
        assert threads >= 1 and 2 * threads <= os.cpu_count()  # 2 jobs at once never oversubscribe the cores


def test_slurm_launcher_composes_with_a_shared_study():
    url = "postgresql://trainlab@db.cluster/optuna"
    overrides = ["hparams_search=optuna", "hydra/launcher=submitit_slurm", f"hydra.sweeper.storage={url}"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert any(sweeper.__name__ == "OptunaSweeper" for sweeper in Plugins.instance().discover(Sweeper))
    HydraConfig.instance().set_config(cfg)
    try:
        assert cfg.callbacks.optuna_pruning.storage == url  # the jobs report to the same study, from any node
    finally:
        HydraConfig.instance().cfg = None
