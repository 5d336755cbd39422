"""Repeats and cross-validation: the folds of ``cv=kfold`` for every kind of data set, resume and predict on a
fold's checkpoint, the grouped table from job files, and through the real command line the sweeps users run
(five seeds, a grid of seeds under joblib, 5-fold and 10-fold cross-validation, a diverging member) with the
grouped table, its picture and its TensorBoard text."""

from __future__ import annotations

import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUIET, cli, cli_main, make_config, make_data, read_csv, read_metrics, write_images
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainlab.dataloader.kinds.image import read_class_folders
from trainlab.errors import ConfigError, DataError
from trainlab.predict import predict
from trainlab.run import build_data, train
from trainlab.sweeps.summary import write_summary


# -- the folds --------------------------------------------------------------------------------------------
def assert_folds_partition_the_pool(folds: list[dict[str, list[int]]], n_samples: int, labels=None) -> None:
    """``folds``: each fold's train / val / test sample indices (test None: the data set's own test split).
    The test split is the same in every fold, the validation sets are disjoint and cover the rest (the pool),
    each fold trains on the pool without its validation set, and with ``labels`` each validation set has
    every class in the pool's proportion, within one sample."""
    test = folds[0]["test"]
    assert all(fold["test"] == test for fold in folds)
    pool = set(range(n_samples)) - set(test or [])
    vals = [set(fold["val"]) for fold in folds]
    assert sum(map(len, vals)) == len(pool) and set().union(*vals) == pool  # disjoint, covering
    for fold, val in zip(folds, vals, strict=True):
        assert set(fold["train"]) == pool - val and len(fold["train"]) == len(fold["train"])
    if labels is not None:
        pool_labels = labels[sorted(pool)]
        for val in vals:
            for label in np.unique(pool_labels):
                expected = len(val) * np.mean(pool_labels == label)
                assert abs(np.sum(labels[sorted(val)] == label) - expected) <= 1


def fold_indices(data) -> dict[str, list[int] | None]:
    return {split: None if index is None else index.tolist() for split, index in data.indices.items()}


@pytest.mark.parametrize(
    ("dataset", "stratified"), [("breast_cancer", True), ("digits", True), ("diabetes", False), ("mnist", True)]
)
@pytest.mark.filterwarnings("ignore:The least populated class")  # the tiny MNIST: 40 images of 10 classes
def test_kfold_splits_the_training_pool_and_keeps_the_test_split(dataset, stratified, image_data_dir):
    """Binary, multiclass and regression tables and images, held-out and official test splits (mnist)."""
    folds, labels = [], None
    for fold in range(5):
        data = make_data(f"dataset={dataset}", "cv=kfold", f"cv.fold={fold}", f"paths.data_dir={image_data_dir}")
        folds.append(fold_indices(data))
        n = len(data.y_train) + len(data.y_val) + (len(data.y_test) if data.indices["test"] is not None else 0)
        if stratified:  # the targets of every loaded sample, in load order
            labels = np.empty(n, dtype=np.int64)
            for split in ("train", "val", "test"):
                if data.indices[split] is not None:
                    labels[data.indices[split].numpy()] = getattr(data, f"y_{split}").numpy()
    assert_folds_partition_the_pool(folds, n, labels)


def test_without_cv_the_val_fraction_is_held_out():
    data = make_data("dataset=breast_cancer")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (387, 68, 114)  # 569: 20% test, 15% of rest


@pytest.mark.parametrize("memory_budget", [0.5, 0.0], ids=["in-memory", "streamed"])
def test_kfold_of_an_image_folder(tmp_path, memory_budget):
    write_images(tmp_path / "images", per_class=10)
    folds = []
    for fold in range(5):
        data = make_data(
            "dataset=image_folder",
            f"dataset.root={tmp_path / 'images'}",
            f"dataset.memory_budget={memory_budget}",
            "cv=kfold",
            f"cv.fold={fold}",
        )
        assert data.in_memory == (memory_budget > 0)
        if data.in_memory:
            folds.append({split: data.indices[split].tolist() for split in ("train", "val", "test")})
        else:
            folds.append({split: list(data.subsets[split].indices) for split in ("train", "val", "test")})
    labels = np.array(read_class_folders(tmp_path / "images", data.input_shape).targets)
    assert_folds_partition_the_pool(folds, len(labels), labels)


def test_kfold_refuses_an_image_folder_with_its_own_validation_split(tmp_path):
    for split in ("train", "val"):
        write_images(tmp_path / "images" / split, per_class=3)
    with pytest.raises(
        DataError, match="is a fixed validation split: move its images into train/, or drop cv=kfold"
    ):
        make_data("dataset=image_folder", f"dataset.root={tmp_path / 'images'}", "cv=kfold")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("cv.fold=5",), "cv.fold must be one of 0 ... 4 (cv.folds=5), got 5"),
        (("cv.folds=1",), "cv.folds must be an integer of at least 2, got 1; e.g. cv.folds=5"),
        (("cv.folds=60", "dataset=iris"), "cv.folds=60 does not fit this data set: n_splits=60 cannot be greater"),
    ],
)
def test_bad_fold_settings_are_one_line_errors(tmp_path, overrides, message):
    code, stderr = cli_main("train.py", "cv=kfold", *overrides, f"hydra.run.dir={tmp_path}", QUIET)
    assert code == 1 and stderr.strip().splitlines()[-1].startswith(f"error: {message}"), stderr


def test_a_folds_checkpoint_resumes_on_its_fold_and_predicts(tmp_path):
    fold = ("dataset=breast_cancer", "cv=kfold", "cv.fold=3", "trainer.max_epochs=1")
    trained = train(make_config(*fold), tmp_path / "first")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    with pytest.raises(
        ConfigError, match=r"cannot resume with cv\.fold=2: the checkpoint was trained with cv\.fold=3"
    ):
        train(
            make_config(*fold, "cv.fold=2", f"ckpt_path={last}"),
            tmp_path / "refused",
            ["cv.fold=2", f"ckpt_path={last}"],
        )

    longer = ["trainer.max_epochs=2", f"ckpt_path={last}"]
    train(
        make_config(*longer), tmp_path / "resumed", longer
    )  # today's defaults: no cv, digits; the checkpoint's win
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 2 and OmegaConf.create(state["config"]).cv.fold == 3
    assert OmegaConf.create(state["config"]).dataset.name == "breast_cancer"

    tested = predict(
        make_config(f"ckpt={tmp_path / 'first' / 'checkpoints' / 'best.ckpt'}", config_name="predict")
    )
    assert tested == {key: value for key, value in trained.items() if key.startswith("test/")}


# -- the grouped table, from files written here ------------------------------------------------------------
def write_job(sweep_dir: Path, num: int, overrides: list[str], status: str, metrics: dict | None) -> None:
    """A job's run dir as SweepSummary and train.py leave it: job.json, and metrics.json where it finished."""
    run_dir = sweep_dir / f"{num}_job"
    run_dir.mkdir(parents=True)
    job = {"job": num, "overrides": overrides, "status": status, "error": "", "wall_time_s": 1.0}
    (run_dir / "job.json").write_text(json.dumps(job | {"monitor": "val/acc", "monitor_mode": "max"}))
    if metrics is not None:
        best = {"best_epoch": 2, "best_score": metrics["val/acc"]}
        (run_dir / "metrics.json").write_text(json.dumps(metrics | best))


def test_groups_average_seeds_and_folds_and_count_failed_members(tmp_path):
    runs = {  # (lr, seed or fold): (val/acc, test/acc); None: failed, or pruned
        ("0.1", "seed=0"): (0.5, 0.4),
        ("0.1", "seed=1"): (0.7, 0.6),
        ("0.1", "seed=2"): None,
        ("0.01", "seed=0"): (0.8, 0.75),
        ("0.01", "seed=1"): (0.9, 0.85),
        ("0.01", "seed=2"): (0.95, 0.8),
        ("0.001", "+seed=0"): None,
    }
    for num, ((lr, seed), scores) in enumerate(runs.items()):
        metrics = (
            None if scores is None else {"val/acc": scores[0], "val/loss": 1 - scores[0], "test/acc": scores[1]}
        )
        status = "ok" if scores else "pruned" if lr == "0.001" else "failed"
        write_job(tmp_path, num, ["cv=kfold", f"cv.fold={num % 3}", seed, f"optimizer.lr={lr}"], status, metrics)
    write_summary(tmp_path)

    rows = read_csv(tmp_path / "groups.csv")
    assert list(rows[0]) == [
        "rank", "overrides", "n", "failed",
        *(f"{m}_{stat}" for m in ("val/acc", "val/loss", "test/acc") for stat in ("mean", "std")),
        "jobs",
    ]  # fmt: skip
    assert [(row["overrides"], row["n"], row["failed"]) for row in rows] == [
        ("cv=kfold optimizer.lr=0.01", "3", "0"),  # best mean val/acc (max) first
        ("cv=kfold optimizer.lr=0.1", "2", "1"),
        ("cv=kfold optimizer.lr=0.001", "0", "1"),  # nothing finished: last, no figures
    ]
    best, worse, pruned = rows
    assert float(best["val/acc_mean"]) == statistics.fmean([0.8, 0.9, 0.95])
    assert float(best["val/acc_std"]) == statistics.stdev([0.8, 0.9, 0.95])
    assert float(best["test/acc_std"]) == statistics.stdev([0.75, 0.85, 0.8])
    assert float(worse["val/loss_mean"]) == pytest.approx(0.4)  # the failed member not averaged in
    assert (best["jobs"], worse["jobs"], pruned["jobs"]) == ("3 4 5", "0 1 2", "6")
    assert pruned["val/acc_mean"] == pruned["val/acc_std"] == ""

    markdown = (tmp_path / "summary.md").read_text().split("\n## ")[1].splitlines()
    assert markdown[0].startswith("groups of runs that differ only in seed or cv.fold: mean ± sample std")
    assert markdown[2] == "| rank | overrides | n | failed | val/acc | val/loss | test/acc |"
    assert markdown[4] == "| 1 | optimizer.lr=0.01 | 3 | 0 | 0.8833 ± 0.076 | 0.1167 ± 0.076 | 0.8 ± 0.05 |"
    assert markdown[6] == "| 3 | optimizer.lr=0.001 | 0 | 1 |  |  |  |"


def test_a_grid_without_repeats_has_no_grouped_table_in_the_markdown(tmp_path):
    for num, lr in enumerate(("0.1", "0.01")):
        write_job(tmp_path, num, [f"optimizer.lr={lr}"], "ok", {"val/acc": 0.5, "test/acc": 0.5})
    write_summary(tmp_path)
    assert [row["n"] for row in read_csv(tmp_path / "groups.csv")] == ["1", "1"]
    assert "\n## " not in (tmp_path / "summary.md").read_text()


# -- the command line --------------------------------------------------------------------------------------
SWEEPS = {
    "seeds": ("seed=0,1,2,3,4", "trainer.max_epochs=3"),
    "grid": (
        "optimizer.lr=1e-3,1e-2",
        "seed=0,1,2",
        "trainer.max_epochs=3",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ),
    "kfold": ("cv=kfold", "dataset=breast_cancer", "trainer.max_epochs=2"),
    "kfold_grid": ("cv=kfold", "cv.folds=10", "optimizer.lr=1e-3,1e-2", "debug=fast", "trainer.limit_batches=1"),
    # seed 4 trains with lr 1e12 (and diverges), the others with 1e-3: the overrides differ only in the seed
    "diverging": (
        "seed=0,1,2,3,4",
        "+diverging={seed4:1e12}",
        "optimizer.lr='${oc.select:diverging.seed${seed},1e-3}'",
        "debug=fast",
    ),
}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, tuple]:
    """Each sweep of ``SWEEPS`` run with train.py: the finished process and its sweep dir."""
    root = tmp_path_factory.mktemp("repeats")

    def run(name: str):
        return cli("train.py", "-m", *SWEEPS[name], QUIET, f"hydra.sweep.dir={root / name}"), root / name

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(SWEEPS, pool.map(run, SWEEPS), strict=True))


def finished_runs(sweep_dir: Path, group: dict) -> list[dict]:
    """metrics.json of a group's finished jobs."""
    jobs = group["jobs"].split()
    rows = [row for row in read_csv(sweep_dir / "summary.csv") if row["job"] in jobs and row["status"] == "ok"]
    return [read_metrics(sweep_dir / row["run_dir"]) for row in rows]


def assert_group_figures_match_the_runs(sweep_dir: Path, group: dict) -> None:
    runs = finished_runs(sweep_dir, group)
    assert int(group["n"]) == len(runs)
    for column in [c for c in group if c.endswith("_mean")]:
        metric = column.removesuffix("_mean")
        values = [run["best_score"] if metric == run["monitor"] else run[metric] for run in runs]
        assert float(group[column]) == pytest.approx(statistics.fmean(values), abs=1e-6)
        assert float(group[f"{metric}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-6)


@pytest.mark.slow
def test_five_seeds_make_one_group_of_five(sweeps):
    done, sweep_dir = sweeps["seeds"]
    assert done.returncode == 0, done.stderr
    (group,) = read_csv(sweep_dir / "groups.csv")
    assert (group["overrides"], group["n"], group["failed"]) == (
        "trainer.max_epochs=3 trainer.progress=False",
        "5",
        "0",
    )
    assert {"val/loss_mean", "val/acc_mean", "test/acc_mean", "test/acc_std", "test/loss_std"} <= set(group)
    assert_group_figures_match_the_runs(sweep_dir, group)
    assert "groups of runs that differ only in seed or cv.fold" in done.stderr  # printed at the end


@pytest.mark.slow
def test_a_grid_of_three_seeds_each_is_two_groups_ranked_by_the_mean_monitor(sweeps):
    done, sweep_dir = sweeps["grid"]  # joblib: the jobs ran in other processes
    assert done.returncode == 0, done.stderr
    groups = read_csv(sweep_dir / "groups.csv")
    assert sorted(group["overrides"].split()[0] for group in groups) == ["optimizer.lr=0.001", "optimizer.lr=0.01"]
    assert [group["n"] for group in groups] == ["3", "3"]
    assert float(groups[0]["val/loss_mean"]) < float(groups[1]["val/loss_mean"])
    for group in groups:
        assert_group_figures_match_the_runs(sweep_dir, group)


@pytest.mark.slow
def test_kfold_runs_one_job_per_fold_that_validates_on_its_own_part_of_the_pool(sweeps):
    done, sweep_dir = sweeps["kfold"]
    assert done.returncode == 0, done.stderr
    configs = [OmegaConf.load(path) for path in sorted(sweep_dir.glob("*/.hydra/config.yaml"))]
    assert sorted(config.cv.fold for config in configs) == [0, 1, 2, 3, 4]
    folds, labels = [], None
    for config in configs:  # each job's data, rebuilt from its saved config
        data = build_data(config)
        folds.append(fold_indices(data))
        n = sum(len(index) for index in data.indices.values())
        labels = np.empty(n, dtype=np.int64)
        for split in ("train", "val", "test"):
            labels[data.indices[split].numpy()] = getattr(data, f"y_{split}").numpy()
    assert_folds_partition_the_pool(folds, n, labels)
    (group,) = read_csv(sweep_dir / "groups.csv")
    assert (group["overrides"], group["n"]) == (
        "cv=kfold dataset=breast_cancer trainer.max_epochs=2 trainer.progress=False",
        "5",
    )
    assert_group_figures_match_the_runs(sweep_dir, group)


@pytest.mark.slow
def test_a_grid_cross_validated_with_ten_folds_makes_twenty_jobs(sweeps):
    done, sweep_dir = sweeps["kfold_grid"]
    assert done.returncode == 0, done.stderr
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 20
    assert [group["n"] for group in read_csv(sweep_dir / "groups.csv")] == ["10", "10"]


@pytest.mark.slow
def test_a_diverging_member_is_counted_as_failed_and_the_others_finish(sweeps):
    done, sweep_dir = sweeps["diverging"]
    assert done.returncode != 0  # a failed job fails the command, after the others ran
    (group,) = read_csv(sweep_dir / "groups.csv")
    assert (group["n"], group["failed"]) == ("4", "1")
    assert_group_figures_match_the_runs(sweep_dir, group)
    (failed,) = [row for row in read_csv(sweep_dir / "summary.csv") if row["status"] == "failed"]
    assert "seed=4" in failed["overrides"] and "the training loss became nan" in failed["error"]
    assert "optimizer.lr='1000000000000.0'" in failed["run_dir"]  # what it ran with: the job dir's name


@pytest.mark.slow
def test_the_picture_draws_a_curve_with_a_band_per_group(sweeps):
    _, sweep_dir = sweeps["grid"]
    image = np.asarray(Image.open(sweep_dir / "groups.png").convert("RGB")).astype(int)
    assert image.shape[1] == 960  # 8 inches at 120 dpi

    def pixels_near(colour: str) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(image - rgb).sum(-1) < 30).sum())

    assert pixels_near("#1f77b4") > 500 and pixels_near("#ff7f0e") > 500  # the two groups' lines (C0, C1)
    band = 0.2 * np.array([31, 119, 180]) + 0.8 * 255  # C0 at alpha 0.2 on white
    assert int((np.abs(image - band).sum(-1) < 12).sum()) > 1000


@pytest.mark.slow
def test_tensorboard_shows_the_grouped_table_as_text(sweeps):
    _, sweep_dir = sweeps["grid"]
    events = EventAccumulator(str(sweep_dir / "groups"))
    events.Reload()
    (text,) = events.Tensors("groups/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert "| rank | overrides | n | failed | val/loss | val/acc |" in table
    assert "| optimizer.lr=0.001 | 3 | 0 |" in table and "| optimizer.lr=0.01 | 3 | 0 |" in table


def test_an_optuna_search_refuses_to_search_over_folds(tmp_path):
    done = cli(
        "train.py", "-m", "hparams_search=optuna", "cv=kfold", QUIET, f"hydra.sweep.dir={tmp_path / 'search'}"
    )
    assert done.returncode == 1
    assert (
        "cv=kfold sweeps the folds, which a search would pick as a hyper-parameter: drop cv=kfold" in done.stderr
    )
    assert not (tmp_path / "search").exists()
