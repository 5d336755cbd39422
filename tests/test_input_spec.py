"""The InputSpec: plain data that survives torch.load(weights_only=True), that every data set makes, that
alone reproduces the data set's preprocessing, and that every checkpoint holds."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import make_data, own_data

from trainlab.dataloader import InputSpec
from trainlab.dataloader.base import as_tuple
from trainlab.dataloader.table_encoding import encode_features, encode_rows

OWN = {"csv": "csv", "image-folder": "image_folder", "text": "text"}  # the data set options of a user's own files
DATASETS = {
    "digits": ["dataset=digits"],
    "sklearn-table": ["dataset=breast_cancer"],
    "regression": ["dataset=diabetes"],
    "linear": ["dataset=linear"],
    "mnist": ["dataset=mnist"],
    "cifar10": ["dataset=cifar10"],
    "csv": None,
    "image-folder": None,
    "text": None,
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_data_set_has_a_spec_that_survives_a_weights_only_load(name, image_data_dir, tmp_path):
    overrides = DATASETS[name] or [f"dataset={OWN[name]}", *own_data(OWN[name], tmp_path)]
    data = make_data(*overrides, f"paths.data_dir={image_data_dir}")
    spec = data.input_spec()
    torch.save({"input_spec": spec.to_dict()}, tmp_path / "spec.pt")
    loaded = torch.load(tmp_path / "spec.pt", weights_only=True)["input_spec"]
    assert InputSpec.from_dict(loaded) == spec
    assert spec.task_object().num_outputs == data.num_outputs and spec.kind == data.kind.name
    if "input_shape" in spec.inputs:  # images and rows; texts are sized by their vocabulary
        assert spec.inputs["input_shape"] == list(data.input_shape)

    # the spec alone turns raw inputs into exactly the model inputs the data set serves
    x, _ = next(iter(data.batches("test")))
    made = as_tuple(spec.input_kind().preprocessing()(*as_tuple(data.untransform(x))))
    assert all(torch.allclose(a.float(), b.float(), atol=1e-5) for a, b in zip(made, as_tuple(x), strict=True))


def test_table_rows_encode_alike_from_json_dicts_and_from_a_frame(tmp_path):
    """What a REST server passes: dicts with columns in any order, some missing, values as text or numbers."""
    data = make_data("dataset=csv", *own_data("csv", tmp_path))
    spec = data.input_spec()
    rows = [
        {"colour": "red", "income": 40.0, "age": 30},
        {"income": "70", "colour": None},  # age missing: the training mean, indicated; colour: "(missing)"
        {"age": "55.5", "income": 50, "colour": "purple", "label": "no"},  # unseen colour: no category
    ]
    encoded = encode_features(rows, spec.inputs["columns"], spec.inputs["na_values"])
    x = encoded.features
    assert encoded.incomplete.tolist() == [False, True, False] and encoded.unseen == {"colour": 1}
    assert torch.allclose(encode_rows(spec, pd.DataFrame(rows[::-1])), x.flip(0), equal_nan=True)  # a frame
    model_inputs = spec.input_kind().preprocessing()(x)
    mean, std = torch.tensor(spec.inputs["mean"]), torch.tensor(spec.inputs["std"])
    expected = torch.tensor(
        [
            [(30 - mean[0]) / std[0], 0, (40 - mean[2]) / std[2], 0, 0, 1, 0],
            [0.0, 1, (70 - mean[2]) / std[2], 0, 0, 0, 1],
            [(55.5 - mean[0]) / std[0], 0, (50 - mean[2]) / std[2], 0, 0, 0, 0],
        ]
    )
    assert spec.inputs["feature_names"] == [
        *("age", "age missing", "income"),
        *("colour=blue", "colour=green", "colour=red", "colour=(missing)"),
    ]
    assert torch.allclose(model_inputs, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["digits", "sklearn-table", "csv", "image-folder"])
def test_checkpoints_hold_the_input_spec(kind, train_run, tmp_path):
    built_in = {"digits": [], "sklearn-table": ["dataset=wine"]}
    overrides = built_in[kind] if kind in built_in else [f"dataset={OWN[kind]}", *own_data(OWN[kind], tmp_path)]
    run_dir, _ = train_run(*overrides, "trainer.max_epochs=1")
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert InputSpec.from_dict(state["input_spec"]) == make_data(*overrides).input_spec()
