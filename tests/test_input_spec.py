"""The InputSpec: plain data that survives torch.load(weights_only=True), that every data set makes, that
alone reproduces the data set's preprocessing, and that every checkpoint holds."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import make_data, write_csv, write_images

from trainlab.dataloader import InputSpec
from trainlab.dataloader.inputs import encode_features, encode_rows


def own_data(kind: str, folder) -> list[str]:
    """Overrides for a small CSV file or image folder written into ``folder``."""
    if kind == "csv":
        path = write_csv(folder / "people.csv")
        return ["dataset=csv", f"dataset.path={path}", "dataset.target=label", "dataset.missing=impute"]
    root = write_images(folder / "photos", per_class=6, size=8)
    return ["dataset=image_folder", f"dataset.root={root}", "dataset.image_size=8", "dataset.num_workers=0"]


DATASETS = {
    "digits": ["dataset=digits"],
    "sklearn-table": ["dataset=breast_cancer"],
    "regression": ["dataset=diabetes"],
    "linear": ["dataset=linear"],
    "mnist": ["dataset=mnist"],
    "cifar10": ["dataset=cifar10"],
    "csv": None,
    "image-folder": None,
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_data_set_has_a_spec_that_survives_a_weights_only_load(name, image_data_dir, tmp_path):
    overrides = DATASETS[name] or own_data(name.split("-")[0], tmp_path)
    data = make_data(*overrides, f"paths.data_dir={image_data_dir}")
    spec = data.input_spec()
    torch.save({"input_spec": spec.to_dict()}, tmp_path / "spec.pt")
    loaded = torch.load(tmp_path / "spec.pt", weights_only=True)["input_spec"]
    assert InputSpec.from_dict(loaded) == spec
    assert spec.input_shape == list(data.input_shape) and spec.task_object().num_outputs == data.num_outputs
    assert spec.kind == ("image" if len(data.input_shape) == 3 else "table")

    # the spec alone turns raw inputs into exactly the model inputs the data set serves
    x, _ = next(iter(data.batches("test")))
    assert torch.allclose(spec.normalize(data.untransform(x)), x, atol=1e-5)


def test_table_rows_encode_alike_from_json_dicts_and_from_a_frame(tmp_path):
    """What a REST server passes: dicts with columns in any order, some missing, values as text or numbers."""
    data = make_data(*own_data("csv", tmp_path))
    spec = data.input_spec()
    rows = [
        {"colour": "red", "income": 40.0, "age": 30},
        {"income": "70", "colour": None},  # age missing: the training mean; colour missing: no category
        {"age": "55.5", "income": 50, "colour": "purple", "label": "no"},  # unseen colour: no category
    ]
    x, incomplete = encode_features(rows, spec.columns, spec.na_values)
    assert incomplete.tolist() == [False, True, False]
    assert torch.allclose(encode_rows(spec, pd.DataFrame(rows[::-1])), x.flip(0), equal_nan=True)  # a frame
    model_inputs = spec.normalize(x)
    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    expected = torch.tensor(
        [
            [(30 - mean[0]) / std[0], (40 - mean[1]) / std[1], 0, 0, 1],
            [0.0, (70 - mean[1]) / std[1], 0, 0, 0],
            [(55.5 - mean[0]) / std[0], (50 - mean[1]) / std[1], 0, 0, 0],
        ]
    )
    assert spec.feature_names == ["age", "income", "colour=blue", "colour=green", "colour=red"]
    assert torch.allclose(model_inputs, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["digits", "sklearn-table", "csv", "image-folder"])
def test_checkpoints_hold_the_input_spec(kind, train_run, tmp_path):
    overrides = {"digits": [], "sklearn-table": ["dataset=wine"]}.get(kind) or own_data(
        kind.split("-")[0], tmp_path
    )
    run_dir, _ = train_run(*overrides, "trainer.max_epochs=1")
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert InputSpec.from_dict(state["input_spec"]) == make_data(*overrides).input_spec()
