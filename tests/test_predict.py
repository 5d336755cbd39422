"""predict.py: the test split's metrics from a checkpoint equal the training run's, predictions for image
folders and CSV files come out as CSV, and inputs that do not fit get a one-line error."""

import csv
import json

import numpy as np
import pytest
import sklearn.datasets
import torch
from conftest import cli_main, make_config, read_csv, write_mnist
from PIL import Image

from trainlab.dataloader import DataError
from trainlab.predict import load_trained, predict
from trainlab.run import train


def run_predict(*overrides: str) -> dict:
    return predict(make_config(*overrides, config_name="predict"))


@pytest.fixture(scope="module")
def table_runs(tmp_path_factory) -> dict:
    """A trained run per tabular task kind, shared by this module's tests."""
    runs = {}
    for dataset in ("iris", "diabetes"):
        run_dir = tmp_path_factory.mktemp(dataset) / "run"
        train(make_config(f"dataset={dataset}", "trainer.max_epochs=5"), run_dir)
        runs[dataset] = run_dir / "checkpoints" / "best.ckpt"
    return runs


def write_table_csv(path, dataset: str, rows: slice, columns=None) -> None:
    """Rows of a scikit-learn table as a user would write them: a header of feature names and a target."""
    bunch = getattr(sklearn.datasets, f"load_{dataset}")()
    names = list(columns or bunch.feature_names)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*names, "target"])
        for x, y in zip(bunch.data[rows], bunch.target[rows], strict=True):
            writer.writerow([*x[: len(names)], y])


def test_round_trip_gives_the_training_runs_test_metrics(digits_run, tmp_path):
    run_dir, trained = digits_run
    output = tmp_path / "metrics.json"
    metrics = run_predict(f"ckpt={run_dir}/checkpoints/best.ckpt", f"output={output}")
    expected = {key: value for key, value in trained.items() if key.startswith("test/")}
    assert metrics == expected  # exactly, not approximately
    assert json.loads(output.read_text()) == expected


def test_round_trip_for_regression_in_data_units(table_runs):
    ckpt = table_runs["diabetes"]
    trained = json.loads((ckpt.parent.parent / "metrics.json").read_text())
    metrics = run_predict(f"ckpt={ckpt}")
    assert metrics == {key: value for key, value in trained.items() if key.startswith("test/")}


def test_folder_of_images_gives_a_row_per_image(digits_run, tmp_path):
    """Held-out digits saved as PNG, some at their own 8x8 grey size and some enlarged to 24x24 colour: the
    training preprocessing (resize, grey, normalisation) is applied and the model recognises them."""
    run_dir, _ = digits_run
    _, data, _ = load_trained(run_dir / "checkpoints" / "best.ckpt", "cpu")
    raw = (data.x_test[:30] * data.std + data.mean).squeeze(1).numpy()
    labels = data.y_test[:30].tolist()
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (pixels, label) in enumerate(zip(raw, labels, strict=True)):
        image = Image.fromarray((pixels * 255).round().astype(np.uint8), mode="L")
        if i % 2:
            image = Image.fromarray(np.kron(np.asarray(image), np.ones((3, 3), np.uint8))).convert("RGB")
        image.save(folder / f"{i:02d}_is_{label}.png")
    (folder / "notes.txt").write_text("not an image: skipped")

    output = tmp_path / "predictions.csv"
    run_predict(f"ckpt={run_dir}/checkpoints/best.ckpt", f"input={folder}", f"output={output}")
    rows = read_csv(output)
    assert list(rows[0]) == ["input", "prediction", "label", *(f"prob_{c}" for c in data.classes)]
    assert [row["input"] for row in rows] == [str(p) for p in sorted(folder.glob("*.png"))]
    for row in rows:
        probabilities = [float(row[f"prob_{c}"]) for c in data.classes]
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
        assert int(row["prediction"]) == int(np.argmax(probabilities))
        assert row["label"] == data.classes[int(row["prediction"])]
    correct = sum(row["input"].endswith(f"_is_{row['label']}.png") for row in rows)
    assert correct >= 0.9 * len(rows)


def test_csv_of_a_classification_table(table_runs, tmp_path):
    source, output = tmp_path / "flowers.csv", tmp_path / "predictions.csv"
    write_table_csv(source, "iris", slice(0, 150, 5))
    metrics = run_predict(f"ckpt={table_runs['iris']}", f"input={source}", f"output={output}")
    rows = read_csv(output)
    classes = ["setosa", "versicolor", "virginica"]
    assert len(rows) == 30
    assert list(rows[0]) == ["input", "prediction", "label", *(f"prob_{c}" for c in classes)]
    for row in rows:
        assert sum(float(row[f"prob_{c}"]) for c in classes) == pytest.approx(1, abs=1e-5)
    assert metrics["input/acc"] >= 0.8  # the CSV has a target column, so predict also scores it
    correct = [row["label"] == classes[5 * i // 50] for i, row in enumerate(rows)]  # row i: flower 5i, 50 a class
    assert np.mean(correct) == pytest.approx(metrics["input/acc"])


def test_csv_of_a_regression_table(table_runs, tmp_path):
    source, output = tmp_path / "patients.csv", tmp_path / "predictions.csv"
    write_table_csv(source, "diabetes", slice(0, 40))
    metrics = run_predict(f"ckpt={table_runs['diabetes']}", f"input={source}", f"output={output}")
    rows = read_csv(output)
    assert len(rows) == 40 and list(rows[0]) == ["input", "prediction"]
    predictions = np.array([float(row["prediction"]) for row in rows])
    targets = sklearn.datasets.load_diabetes().target[:40]
    assert np.mean((predictions - targets) ** 2) == pytest.approx(metrics["input/mse"], rel=1e-4)  # in units
    assert metrics["input/r2"] > 0.3


@pytest.mark.parametrize(
    "columns, complaint",
    [
        (["a", "b", "c"], "has 3 feature columns (a, b, c) but the model expects 4"),
        (["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "colour"], "petal width (cm)"),
    ],
    ids=["wrong-shape", "wrong-columns"],
)
def test_csv_that_does_not_fit_fails_in_one_line(table_runs, tmp_path, columns, complaint):
    source, output = tmp_path / "bad.csv", tmp_path / "predictions.csv"
    write_table_csv(source, "iris", slice(0, 10), columns=columns)
    code, stderr = cli_main("predict.py", f"ckpt={table_runs['iris']}", f"input={source}", f"output={output}")
    assert code != 0
    error = stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and complaint in error[0], stderr
    assert not output.exists()


def test_inputs_of_the_wrong_kind_are_user_errors(digits_run, table_runs, tmp_path):
    images = digits_run[0] / "checkpoints" / "best.ckpt"
    table = tmp_path / "table.csv"
    write_table_csv(table, "iris", slice(0, 3))
    cases = [
        (images, table, "not an image"),
        (table_runs["iris"], tmp_path, "CSV"),
        (images, tmp_path / "missing.png", "does not exist"),
    ]
    for ckpt, source, complaint in cases:
        with pytest.raises(DataError, match=complaint) as error:
            run_predict(f"ckpt={ckpt}", f"input={source}", f"output={tmp_path / 'out.csv'}")
        assert "\n" not in str(error.value)


def test_predict_on_images_needs_only_the_checkpoint(tmp_path, monkeypatch):
    """MNIST-style files: predictions on PNGs of test digits equal the model's outputs on the test split,
    and stay the same once the training data is gone; evaluating the test split then says what it needs."""
    import torchvision

    data_dir = tmp_path / "data"
    arrays = write_mnist(data_dir, n_train=60, n_test=10)
    run_dir = tmp_path / "run"
    train(make_config("model=mlp", "dataset=mnist", f"paths.data_dir={data_dir}", "trainer.max_epochs=1"), run_dir)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    _, data, model = load_trained(ckpt, "cpu")
    with torch.no_grad():
        expected = data.task.probabilities(model(data.x_test[:5]))  # the official test split, in file order
    pictures = tmp_path / "digits"
    pictures.mkdir()
    for i, pixels in enumerate(arrays["test_images"][:5]):
        Image.fromarray(pixels, mode="L").save(pictures / f"{i}.png")

    def probabilities(output) -> np.ndarray:
        run_predict(f"ckpt={ckpt}", f"input={pictures}", f"output={output}")
        return np.array([[float(row[f"prob_{c}"]) for c in data.classes] for row in read_csv(output)])

    with_data = probabilities(tmp_path / "with_data.csv")
    assert with_data == pytest.approx(expected.numpy(), abs=1e-5)
    data_dir.rename(tmp_path / "moved")
    without_data = probabilities(tmp_path / "without_data.csv")
    assert without_data == pytest.approx(with_data, abs=1e-5)
    assert [r["label"] for r in read_csv(tmp_path / "without_data.csv")] == [
        r["label"] for r in read_csv(tmp_path / "with_data.csv")
    ]

    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # no download either
    with pytest.raises(DataError, match="evaluating the test split rebuilds the training data set") as error:
        run_predict(f"ckpt={ckpt}")
    assert "MNIST files not found" in str(error.value) and "input=" in str(error.value)


def test_outputs_go_where_the_user_says(digits_run, tmp_path, monkeypatch):
    """A checkpoint outside a run dir: the test metrics go to the current folder, and nothing is written
    beside the checkpoint or above it; in a run dir, beside the run's files, which are never overwritten."""
    run_dir, _ = digits_run
    loose = tmp_path / "x" / "x.ckpt"
    loose.parent.mkdir()
    loose.write_bytes((run_dir / "checkpoints" / "best.ckpt").read_bytes())
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    run_predict(f"ckpt={loose}")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["here", "predict_metrics.json", "x", "x.ckpt"]
    assert (here / "predict_metrics.json").is_file()

    run_predict(f"ckpt={run_dir}/checkpoints/best.ckpt")
    assert (run_dir / "predict_metrics.json").is_file()
    before = (run_dir / "metrics.json").read_text()
    for output in (run_dir / "metrics.json", run_dir / "checkpoints" / "new.csv"):
        code, stderr = cli_main("predict.py", f"ckpt={run_dir}/checkpoints/best.ckpt", f"output={output}")
        assert code == 1 and "is a file of the training run" in stderr and stderr.count("\n") == 1, stderr
    assert (run_dir / "metrics.json").read_text() == before
    assert not (run_dir / "checkpoints" / "new.csv").exists()
