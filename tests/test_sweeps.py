"""Multiruns: the summary table from the jobs' files; through the real command line, grids with their summary,
a failing job, joblib, Optuna searches (resumed, pruned) and the SLURM launcher's config. Every job there is a
1-epoch run of a few batches on digits."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import optuna
import pytest
import torch
from conftest import CONF, ROOT, cli, read_metrics
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf
from optuna.trial import TrialState
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata as hparams_metadata

from trainlab.sweeps.summary import write_summary

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


# -- the summary table, from files written here ----------------------------------------------------------
COMMON = "trainer.max_epochs=3"


def write_job(sweep_dir: Path, num: int, status: str, score: float | None, monitor=("val/loss", "min")) -> None:
    """A job's run dir as SweepSummary and train.py leave it: job.json, and metrics.json if it has a score."""
    run_dir = sweep_dir / f"{num}_lr={num}"
    run_dir.mkdir(parents=True)
    job = {
        "job": num,
        "overrides": [COMMON, f"optimizer.lr={num}"],
        "status": status,
        "error": "TrainingError: the training loss became nan" if status == "failed" else "",
        "monitor": monitor[0],
        "monitor_mode": monitor[1],
        "wall_time_s": 1.25 + num,
    }
    (run_dir / "job.json").write_text(json.dumps(job))
    if score is not None:
        metrics = {"best_epoch": 2, "best_score": score, "test/acc": 0.123456789 + num, "test/loss": 0.5}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))


@pytest.mark.parametrize(
    ("monitor", "ranked"), [(("val/loss", "min"), [3, 2, 4]), (("val/acc", "max"), [4, 2, 3])]
)
def test_summary_ranks_by_the_monitor_with_pruned_then_failed_jobs_last(tmp_path, monitor, ranked):
    write_job(tmp_path, 0, "failed", None, monitor)
    write_job(tmp_path, 1, "pruned", 0.01, monitor)  # the best score, but a pruned job ranks after the ok ones
    for num, score in ((2, 0.5), (3, 0.2), (4, 0.9)):
        write_job(tmp_path, num, "ok", score, monitor)
    write_summary(tmp_path)
    rows = summary_rows(tmp_path)
    assert [int(row["job"]) for row in rows] == [*ranked, 1, 0]
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4", "5"]
    assert [row["status"] for row in rows] == ["ok", "ok", "ok", "pruned", "failed"]
    assert rows[-2][monitor[0]] == "" and rows[-1][monitor[0]] == ""


def test_summary_csv_has_every_column_and_markdown_leaves_out_the_common_overrides(tmp_path):
    write_job(tmp_path, 0, "failed", None)
    write_job(tmp_path, 1, "ok", 0.123456789)
    write_summary(tmp_path)

    with open(tmp_path / "summary.csv") as file:
        header, failed_last = next(csv.reader(file)), summary_rows(tmp_path)
    columns = ["rank", "job", "overrides", "status", "error", "best_epoch", "val/loss", "test/acc", "test/loss"]
    assert header == [*columns, "wall_time_s", "run_dir"]
    ok, failed = failed_last
    assert ok["overrides"] == f"{COMMON} optimizer.lr=1"  # every override, numbers unrounded
    assert (ok["val/loss"], ok["test/acc"], ok["wall_time_s"]) == ("0.123456789", "1.123456789", "2.25")
    assert (ok["best_epoch"], ok["error"], ok["run_dir"]) == ("2", "", "1_lr=1")
    assert failed["error"] == "TrainingError: the training loss became nan" and failed["test/acc"] == ""

    title, _, common, _, md_header, _, first, second = (tmp_path / "summary.md").read_text().splitlines()
    assert title.startswith(f"# sweep {tmp_path}: 2 jobs (1 ok, 0 pruned, 1 failed), ranked by val/loss (min)")
    assert common == f"All jobs: `{COMMON}`"
    assert (
        md_header
        == "| rank | job | overrides | status | best_epoch | val/loss | test/acc | test/loss | wall_time_s |"
    )
    assert first == "| 1 | 1 | optimizer.lr=1 | ok | 2 | 0.1235 | 1.123 | 0.5 | 2.25 |"
    assert (
        second
        == "| 2 | 0 | optimizer.lr=0 | failed: TrainingError: the training loss became nan |  |  |  |  | 1.25 |"
    )


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
        metrics = read_metrics(sweep_dir / row["run_dir"])
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
        if run == "tensorboard":  # the sweep's own experiment (test_tensorboard.py), not a job
            continue
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
    # a child inherits an ignored SIGINT (pytest started by `cmd &` in a script), and Ctrl-C would then not
    # reach the search before its trials catch it themselves: the search starts with Python's own handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    search = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    signal.signal(signal.SIGINT, previous)
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
        assert threads == max(1, joblib.cpu_count() // 2)  # each of the 2 jobs at once gets its share of the cores


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
