"""Users' own data: a CSV file and a folder of images, through training, predict and TensorBoard."""

from __future__ import annotations

import json
import logging
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CLASSES, make_config, make_data, read_csv, write_csv, write_images
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainlab.cli import run_job
from trainlab.dataloader import DataError
from trainlab.dataloader.csv_table import infer_task
from trainlab.predict import load_trained, predict
from trainlab.run import train

FAST = ("trainer.progress=false", "trainer.num_threads=1")


def row_numbers(rows: list[dict[str, str]], data, x: torch.Tensor) -> list[int]:
    """The CSV row of each of the model inputs ``x``, found by its (unique) income."""
    incomes = data.untransform(x)[:, data.feature_names.index("income")]
    row_of = {round(float(r["income"]) * 5): i for i, r in enumerate(rows)}
    return [row_of[round(float(v) * 5)] for v in incomes]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv")
    data_file = write_csv(folder / "people.csv")
    overrides = ["dataset=csv", f"dataset.path={data_file}", "dataset.target=label"]
    metrics = train(make_config(*FAST, *overrides, "trainer.max_epochs=8"), folder / "run")
    return data_file, folder / "run", metrics


def test_csv_trains_and_predict_applies_the_training_statistics(csv_run, tmp_path):
    data_file, run_dir, metrics = csv_run
    assert metrics["test/acc"] >= 0.85
    _, data, model = load_trained(run_dir / "checkpoints" / "best.ckpt", torch.device("cpu"))
    assert data.task.kind == "binary" and data.classes == ["no", "yes"]
    spec = data.input_spec().inputs
    assert [(c["name"], c["type"], c.get("categories")) for c in spec["columns"]] == [
        ("age", "number", None),
        ("income", "number", None),
        ("colour", "category", ["blue", "green", "red"]),
    ]
    assert spec["feature_names"] == [
        *("age", "age missing", "income"),
        *("colour=blue", "colour=green", "colour=red", "colour=(missing)"),
    ]
    assert (
        run_dir / "columns.md"
    ).read_text() == data.report and "| age | feature | number | 13% |" in data.report

    # the training rows, found by their unique income, give the statistics the checkpoint must hold
    rows = read_csv(data_file)
    train_rows = [rows[i] for i in row_numbers(rows, data, data.x_train)]
    ages = np.array([float(r["age"]) if r["age"] else np.nan for r in train_rows])
    age_mean = np.nanmean(ages)
    age_std = np.std(np.where(np.isnan(ages), age_mean, ages), ddof=1)  # imputed with the mean, then scaled
    assert data.mean[0].item() == pytest.approx(age_mean, rel=1e-5)
    assert data.std[0].item() == pytest.approx(age_std, rel=1e-5)
    all_ages = [float(r["age"]) for r in rows if r["age"]]
    assert abs(np.mean(all_ages) - age_mean) > 1e-3  # the val and test rows took no part
    binary = [1, 3, 4, 5, 6]  # the missing indicator and one-hot features stay 0/1
    assert data.mean[binary].tolist() == [0] * 5 and data.std[binary].tolist() == [1] * 5

    new_rows = tmp_path / "new_rows.csv"
    new_rows.write_text("colour,age,income,label\nred,30,40.0,yes\nblue,,70.0,no\npurple,55.5,50.0,no\n")
    output = tmp_path / "predictions.csv"
    predict(
        make_config(
            f"ckpt={run_dir}/checkpoints/best.ckpt", f"input={new_rows}", f"output={output}", config_name="predict"
        )
    )
    mean, std = data.mean.squeeze(), data.std.squeeze()
    expected_inputs = torch.tensor(
        [
            [(30 - mean[0]) / std[0], 0, (40 - mean[2]) / std[2], 0, 0, 1, 0],  # red
            [0.0, 1, (70 - mean[2]) / std[2], 1, 0, 0, 0],  # age missing: the training mean, indicated; blue
            [(55.5 - mean[0]) / std[0], 0, (50 - mean[2]) / std[2], 0, 0, 0, 0],  # unseen colour: none
        ]
    )
    with torch.no_grad():
        expected = torch.sigmoid(model(expected_inputs)).squeeze(1)
    written = [float(r["prob_yes"]) for r in read_csv(output)]
    assert written == pytest.approx(expected.tolist(), abs=1e-5)
    assert Image.open(tmp_path / "predictions_confusion_matrix.png").size[0] > 50


def test_predict_reproduces_the_training_time_predictions(csv_run, tmp_path):
    data_file, run_dir, _ = csv_run
    _, data, model = load_trained(run_dir / "checkpoints" / "best.ckpt", torch.device("cpu"))
    with torch.no_grad():
        at_training = data.task.probabilities(model(data.x_test))[:, 1]
    output = tmp_path / "all.csv"
    predict(
        make_config(
            f"ckpt={run_dir}/checkpoints/best.ckpt",
            f"input={data_file}",
            f"output={output}",
            config_name="predict",
        )
    )
    predicted = read_csv(output)
    test_rows = row_numbers(read_csv(data_file), data, data.x_test)
    assert [float(predicted[i]["prob_yes"]) for i in test_rows] == pytest.approx(at_training.tolist(), abs=1e-5)


def test_csv_missing_values_dropped_and_counted(tmp_path, caplog):
    data_file = write_csv(tmp_path / "people.csv")
    rows = read_csv(data_file)
    complete = sum(r["age"] != "" and r["colour"] != "NA" for r in rows)
    ages, colours = sum(r["age"] == "" for r in rows), sum(r["colour"] == "NA" for r in rows)
    with caplog.at_level(logging.INFO):
        data = make_data(
            "dataset=csv", f"dataset.path={data_file}", "dataset.target=label", "dataset.missing=drop"
        )
    assert sum(data.num_samples(split) for split in ("train", "val", "test")) == complete
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]  # 22% of the rows: a warning
    assert f"dropped {len(rows) - complete} of {len(rows)} rows (22%) with a missing feature" in warning.message
    assert f"missing in age {ages}, colour {colours}" in warning.message
    assert not data.x_train.isnan().any() and data.feature_names == [
        *("age", "income", "colour=blue", "colour=green", "colour=red")  # nothing missing: no indicators
    ]


def test_csv_without_its_target_column_is_a_one_line_error(tmp_path, capsys):
    data_file = write_csv(tmp_path / "people.csv", n=20)
    cfg = make_config("dataset=csv", f"dataset.path={data_file}", "dataset.target=Outcome")
    with pytest.raises(SystemExit) as exit_:
        run_job(lambda: train(cfg, tmp_path / "run"))  # what train.py does with errors
    assert exit_.value.code == 1
    (message,) = capsys.readouterr().err.strip().splitlines()
    assert (
        message.startswith("error: ")
        and "dataset.target=Outcome" in message
        and "age, income, colour, label" in message
    )


def test_predict_on_rows_needs_only_the_checkpoint(tmp_path):
    """Predictions on new rows are the same once the training CSV is gone; the test split then needs it."""
    data_file = write_csv(tmp_path / "people.csv", n=200)
    run_dir = tmp_path / "run"
    train(
        make_config(
            *FAST, "dataset=csv", f"dataset.path={data_file}", "dataset.target=label", "trainer.max_epochs=2"
        ),
        run_dir,
    )
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    new_rows = tmp_path / "new_rows.csv"
    new_rows.write_text("income,colour,age\n40.0,red,30\n70.0,blue,\n50.0,purple,55.5\n")

    def predictions(output: Path) -> list[dict[str, str]]:
        predict(make_config(f"ckpt={ckpt}", f"input={new_rows}", f"output={output}", config_name="predict"))
        return read_csv(output)

    with_data = predictions(tmp_path / "with_data.csv")
    data_file.rename(tmp_path / "moved.csv")
    without_data = predictions(tmp_path / "without_data.csv")
    assert [r["label"] for r in without_data] == [r["label"] for r in with_data]
    assert [float(r["prob_yes"]) for r in without_data] == pytest.approx(
        [float(r["prob_yes"]) for r in with_data], abs=1e-5
    )
    with pytest.raises(DataError, match=r"rebuilds the training data set.*people\.csv does not exist"):
        predict(make_config(f"ckpt={ckpt}", config_name="predict"))


def test_tsv_and_parquet_read_as_the_csv(tmp_path):
    data_file = write_csv(tmp_path / "people.csv")
    frame = pd.read_csv(data_file, keep_default_na=False)
    frame.to_csv(tmp_path / "people.tsv", sep="\t", index=False)
    pd.read_csv(data_file).to_parquet(tmp_path / "people.parquet")  # missing values as nulls
    specs = [
        make_data("dataset=csv", f"dataset.path={tmp_path / name}", "dataset.target=label").input_spec()
        for name in ("people.csv", "people.tsv", "people.parquet")
    ]
    assert specs[0].inputs["columns"][2]["categories"] == ["blue", "green", "red"]
    assert specs[1] == specs[0] and specs[2].difference(specs[0]) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "people.csv is empty; it needs a header line and at least one row"),
        (b"age,colour,label\n", "people.csv has a header but no rows"),
        (b"age,colour,label\n30,red,yes\n41,bl\xe9u,no\n", "people.csv is not UTF-8 text"),
        (
            b"age,colour,label\n30,red,yes\n41,blue,no\n50,green\n",
            "people.csv, line 4: 2 cells, but the header names 3",
        ),
        (b"age,colour,label\n30,red,yes\n41,blue,no,7\n", "people.csv, line 3: 4 cells, but the header names 3"),
        (b"age,colour,outcome\n30,red,yes\n41,blue,no\n", "dataset.target=label is not a column of"),
    ],
    ids=["empty", "header-only", "bad-encoding", "short-row", "long-row", "no-target"],
)
def test_unreadable_csv_is_a_one_line_error(tmp_path, content, message):
    (tmp_path / "people.csv").write_bytes(content)
    with pytest.raises(DataError) as error:
        make_data("dataset=csv", f"dataset.path={tmp_path / 'people.csv'}", "dataset.target=label")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_feature_column_is_named_with_the_columns_there(tmp_path):
    data_file = write_csv(tmp_path / "people.csv", n=20)
    with pytest.raises(DataError) as error:
        make_data(
            "dataset=csv", f"dataset.path={data_file}", "dataset.target=label", "dataset.features=[age,height]"
        )
    assert str(error.value).endswith("has no column height; its columns are age, income, colour, label")


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["yes", "no", "no"], "binary"),
        (["0", "1", "1.0"], "binary"),
        (["1", "2", "3"], "multiclass"),
        (["a", "b", "c", "a"], "multiclass"),
        (["0.5", "1.25", "3"], "regression"),
        ([str(i) for i in range(50)], "regression"),
    ],
)
def test_task_inferred_from_the_target(values, task):
    assert infer_task(values, max_classes=10) == task


def write_penguins(path: Path, n: int = 344, seed: int = 0) -> Path:
    """A table like the Palmer penguins: body mass in grams (thousands) from species, sex and measurements,
    text columns and a few missing values."""
    rng = np.random.default_rng(seed)
    species = rng.choice(["Adelie", "Chinstrap", "Gentoo"], n, p=[0.44, 0.2, 0.36])
    island = np.where(species == "Gentoo", "Biscoe", rng.choice(["Biscoe", "Dream", "Torgersen"], n))
    male = rng.random(n) < 0.5
    typical = pd.Series(species).map({"Adelie": 3700, "Chinstrap": 3730, "Gentoo": 5075}).to_numpy()
    mass = typical + np.where(male, 340, -340) + rng.normal(0, 300, n)
    frame = pd.DataFrame(
        {
            "species": species,
            "island": island,
            "bill_length_mm": (np.where(species == "Adelie", 38.8, 48.0) + 2.5 * male + rng.normal(0, 2, n)).round(
                1
            ),
            "flipper_length_mm": (
                np.where(species == "Gentoo", 217, 192) + (mass - typical) / 60 + rng.normal(0, 4, n)
            ).round(),
            "sex": np.where(male, "male", "female"),
            "body_mass_g": (mass / 25).round() * 25,
        }
    )
    frame.loc[rng.random(n) < 0.03, "sex"] = None
    frame.to_csv(path, index=False)
    return path


def test_regression_in_grams_learns_with_the_defaults(tmp_path):
    """Targets in the thousands: standardised for learning by default, metrics and predictions in grams."""
    data_file = write_penguins(tmp_path / "penguins.csv")
    overrides = ["dataset=csv", f"dataset.path={data_file}", "dataset.target=body_mass_g"]
    metrics = train(make_config(*FAST, *overrides), tmp_path / "run")  # 10 epochs, the default
    assert metrics["test/r2"] >= 0.8 and 50 < metrics["test/mae"] < 400  # grams
    output = tmp_path / "predictions.csv"
    predict(
        make_config(
            f"ckpt={tmp_path}/run/checkpoints/best.ckpt",
            f"input={data_file}",
            f"output={output}",
            config_name="predict",
        )
    )
    predicted = pd.read_csv(output)["prediction"]
    assert abs(predicted.mean() - pd.read_csv(data_file)["body_mass_g"].mean()) < 100


# -- image folders --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_images(root / "train", per_class=40, seed=1)
    write_images(root / "test", per_class=10, seed=2)
    overrides = [
        "dataset=image_folder",
        f"dataset.root={root}",
        "dataset.image_size=16",
        "dataset.batch_size=16",
        "dataset.num_workers=1",
        "dataset.memory_budget=0",  # streamed: the in-memory path is tested in test_image_folders.py
        "model=cnn",
        "augment=standard",
        "augment.ops.crop.padding=2",
        "trainer.max_epochs=10",
    ]
    run_dir = root.parent / f"{root.name}_run"
    return root, run_dir, train(make_config(*FAST, *overrides), run_dir)


def test_image_folder_trains_and_predicts_its_test_folder(image_run, tmp_path):
    root, run_dir, metrics = image_run
    assert metrics["test/acc"] >= 0.8
    output = tmp_path / "predictions.csv"
    cfg = make_config(
        f"ckpt={run_dir}/checkpoints/best.ckpt", f"input={root}/test", f"output={output}", config_name="predict"
    )
    predicted = predict(cfg)
    assert predicted["input/acc"] == pytest.approx(metrics["test/acc"])  # root/test is the test split
    rows = read_csv(output)
    assert len(rows) == 30 and {r["label"] for r in rows} <= set(CLASSES)
    assert (tmp_path / "predictions_confusion_matrix.png").is_file()

    single = tmp_path / "one.csv"
    predict(
        make_config(
            f"ckpt={run_dir}/checkpoints/best.ckpt",
            f"input={root}/test/vertical/0.png",
            f"output={single}",
            config_name="predict",
        )
    )
    assert len(read_csv(single)) == 1


def test_image_folder_splits_and_resumable_order(tmp_path):
    root = write_images(tmp_path / "flat", per_class=10)
    data = make_data(
        "dataset=image_folder",
        f"dataset.root={root}",
        "dataset.image_size=16",
        "dataset.batch_size=4",
        "dataset.num_workers=0",
        "augment=strong",
    )
    assert [data.num_samples(s) for s in ("train", "val", "test")] == [
        22,
        2,
        6,
    ]  # 30: 20% test, 10% of the rest val
    assert data.classes == list(CLASSES) and data.input_shape == (3, 16, 16)
    whole_epoch = list(data.train_batches(epoch=1))
    resumed = list(data.train_batches(epoch=1, start=2))
    assert len(resumed) == len(whole_epoch) - 2
    for (x, y), (x_resumed, y_resumed) in zip(whole_epoch[2:], resumed, strict=True):
        assert torch.equal(x, x_resumed) and torch.equal(y, y_resumed)


def test_tensorboard_pictures_of_an_image_classifier(image_run):
    _, run_dir, _ = image_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert {"inputs/train", "test/confusion_matrix", "test/misclassified"} <= set(events.Tags()["images"])
    assert {f"test/pr_curve/{c}" for c in CLASSES} <= set(events.Tags()["tensors"])
    grid = events.Images("inputs/train")[0]
    assert grid.width >= 8 * 64  # 8 columns of images enlarged to 64 pixels
    for tag in ("inputs/train", "test/confusion_matrix"):
        assert Image.open(BytesIO(events.Images(tag)[-1].encoded_image_string)).mode == "RGB"


def test_tensorboard_scatter_for_regression(tmp_path):
    data_file = tmp_path / "values.csv"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    data_file.write_text("a,b,y\n" + "".join(f"{a:.4f},{b:.4f},{2 * a - b:.4f}\n" for a, b in x))
    run_dir = tmp_path / "run"
    train(
        make_config(*FAST, "dataset=csv", f"dataset.path={data_file}", "dataset.target=y", "trainer.max_epochs=2"),
        run_dir,
    )
    assert (
        json.loads((run_dir / "metrics.json").read_text())["test/r2"] > 0.8
    )  # y = 2a - b, a line: learnt in 2 epochs
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["test/predicted_vs_true"]  # tables get no input grid


# -- column roles, messages and limits -----------------------------------------------------------------
def write_members(path: Path, n: int = 120, seed: int = 0) -> Path:
    """A pandas export (an unnamed row-number column first) of club members: a unique ``name``, a ``joined``
    date, a ``plan`` of many rare values, a mostly empty ``note`` and a ``stays`` target that the joining
    month and the age decide."""
    rng = np.random.default_rng(seed)
    joined = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 1000, n), unit="D")
    age = rng.normal(40, 10, n).round()
    frame = pd.DataFrame(
        {
            "name": [f"member {i} {rng.choice(['Ann', 'Bo', 'Cy'])}" for i in range(n)],
            "joined": joined.strftime("%Y-%m-%d"),
            "plan": rng.choice(["basic"] * 10 + [f"promo{i}" for i in range(30)], n),
            "age": age,
            "note": np.where(rng.random(n) < 0.9, None, "called"),
            "stays": np.where((joined.month <= 6) ^ (age > 40), "yes", "no"),
        }
    )
    frame.to_csv(path)  # the index as an unnamed first column, as pandas and R write it
    return path


def test_column_roles_are_inferred_reported_and_overridable(tmp_path, caplog, train_run):
    source = write_members(tmp_path / "members.csv")
    csv = ("dataset=csv", f"dataset.path={source}", "dataset.target=stays")
    with caplog.at_level(logging.INFO):
        run_dir, _ = train_run(*csv, *FAST, "trainer.max_epochs=1")
    report = (run_dir / "columns.md").read_text()
    for line in [
        "| Unnamed: 0 | left out: row numbers (an unnamed column of distinct integers) | number | 0% | 120 |  | 0 |",
        "| name | left out: an identifier or free text (120 distinct values in 120 rows; free text: dataset=text; "
        "one-hot anyway: dataset.categorical=[name]) | text |",
        "| joined | feature | text | 0% | ",
        "date (ISO8601): year, month, day_of_year, weekday | 4 |",
        "| plan | feature | text | 0% | 31 | one-hot: 1 value + (other) | 2 |",  # the rare promos: "(other)"
        "| note | feature | text | 89% | 1 | one-hot: 0 values + (other) + (missing) | 2 |",  # "called": rare
    ]:
        assert line in report, report
    assert report in caplog.text  # the report is logged too
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert "data/columns/text_summary" in events.Tags()["tensors"]  # TensorBoard's Text tab
    built = next(r.message for r in caplog.records if r.message.startswith("model MLP"))
    assert " on 9 features from 4 columns, " in built  # joined 4, plan 2, age 1, note 2

    data = make_data(
        *csv,
        "dataset.exclude=[note,age]",
        "dataset.categorical=[name]",
        "dataset.date_parts=[month]",
        "dataset.max_categories=2",
        "dataset.min_frequency=1",
    )
    names = data.feature_names  # two of each column's most frequent values (names: all once), then the rest
    assert [n.split("=")[0] + ("=(other)" if n.endswith("(other)") else "") for n in names] == [
        *("name", "name", "name=(other)", "joined.month", "plan", "plan", "plan=(other)")
    ]
    assert "plan=basic" in names
    assert "| note | left out: dataset.exclude |" in data.report
    only = make_data(*csv, "dataset.features=[Unnamed: 0,plan]").input_spec().inputs["feature_names"]
    assert only == ["Unnamed: 0", "plan=basic", "plan=(other)"]  # listed: kept whatever they look like


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            (),
            "dataset=csv needs the column to predict: add dataset.target=<column>, one of Unnamed: 0, name, joined",
        ),
        (("dataset.target=stays", "dataset.exclude=[nome]"), "members.csv has no column nome; its columns are"),
        (
            ("dataset.target=stays", "dataset.dates=[plan]"),
            "dataset.dates names 'plan', but its cells are no dates",
        ),
        (("dataset.target=stays", "dataset.date_parts=[season]"), "dataset.date_parts must name some of year,"),
        (
            ("dataset.target=stays", "dataset.memory_budget=1e-9"),
            "120 rows x 9 features take 0.00 GiB, over the memory budget of 0.00 GiB (dataset.memory_budget); "
            "column 'joined' makes 4 of them: leave it out (dataset.exclude=[joined])",
        ),
    ],
    ids=["no-target", "unknown-column", "not-dates", "unknown-date-part", "over-the-memory-budget"],
)
def test_csv_settings_that_cannot_work_are_one_line_errors(tmp_path, overrides, message):
    source = write_members(tmp_path / "members.csv")
    with pytest.raises(Exception) as error:  # Hydra wraps errors raised as it instantiates
        make_data("dataset=csv", f"dataset.path={source}", *overrides)
    cause = error.value.__cause__ or error.value
    assert isinstance(cause, DataError) and message in str(cause) and "\n" not in str(cause)


def test_a_missing_file_says_it_does_not_exist(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.csv does not exist; give a CSV, TSV or Parquet file"):
        make_data("dataset=csv", f"dataset.path={tmp_path / 'nowhere.csv'}", "dataset.target=label")


def test_predict_counts_unseen_categories_and_dates_per_column(tmp_path, caplog):
    source = write_members(tmp_path / "members.csv")
    run_dir = tmp_path / "run"
    train(
        make_config(
            *FAST, "dataset=csv", f"dataset.path={source}", "dataset.target=stays", "trainer.max_epochs=1"
        ),
        run_dir,
    )
    rows = tmp_path / "new.csv"
    rows.write_text(
        ",name,joined,plan,age,note\n0,x,2021-02-03,gold,30,\n1,y,someday,gold,50,called\n2,z,,basic,,\n"
    )
    with caplog.at_level(logging.INFO):
        predict(
            make_config(
                f"ckpt={run_dir}/checkpoints/best.ckpt",
                f"input={rows}",
                f"output={tmp_path / 'p.csv'}",
                config_name="predict",
            )
        )
    assert "column 'plan' has 2 values not among the training categories (encoded as (other))" in caplog.text
    assert "column 'joined' has 1 dates that do not parse (encoded as missing)" in caplog.text
    assert len(read_csv(tmp_path / "p.csv")) == 3
