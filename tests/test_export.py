"""export.py: the ONNX model takes raw inputs, has a dynamic batch axis and the input spec in its metadata,
and ONNX Runtime gives torch's outputs (the test split's accuracy equals the run's); a layer the exporter
cannot translate is named in one line."""

import json
import logging

import onnx
import onnxruntime
import pytest
import torch
from conftest import accept_cifar10_checksums, make_config, write_cifar10, write_csv, write_mnist
from torch import nn

from trainlab.dataloader import InputSpec
from trainlab.errors import CheckpointError
from trainlab.export import export, to_onnx
from trainlab.inference import CLASSES_KEY, INPUT_SPEC_KEY, METRICS_KEY, InferenceModel, Predictor
from trainlab.run import train


def run_export(ckpt, *overrides: str) -> dict:
    return export(make_config(f"ckpt={ckpt}", *overrides, config_name="export"))


def check_export(ckpt, tmp_path, caplog) -> tuple[dict, onnx.ModelProto]:
    """Export ``ckpt``; the check's line is logged and the file holds the spec, classes and test metrics."""
    output = tmp_path / "model.onnx"
    with caplog.at_level(logging.INFO, logger="trainlab"):
        result = run_export(ckpt, f"output={output}")
    assert any("max abs difference from torch" in r.getMessage() for r in caplog.records)
    assert result["max_abs_diff"] <= 1e-4
    model = onnx.load(output)
    meta = {p.key: p.value for p in model.metadata_props}
    spec = InputSpec.from_dict(json.loads(meta[INPUT_SPEC_KEY]))
    assert json.loads(meta[CLASSES_KEY]) == spec.class_names
    trained = json.loads((ckpt.parent.parent / "metrics.json").read_text())
    assert json.loads(meta[METRICS_KEY]) == {k: v for k, v in trained.items() if k.startswith("test/")}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    return result, model


def test_mlp_export_equals_the_runs_test_accuracy(digits_run, tmp_path, caplog):
    run_dir, trained = digits_run
    result, _ = check_export(run_dir / "checkpoints" / "best.ckpt", tmp_path, caplog)
    assert result["inputs"].startswith("the test split")
    assert result["onnx/acc"] == pytest.approx(trained["test/acc"], abs=1e-4)
    # any batch size, and the same answers as the checkpoint's own predictor
    onnx_model, torch_model = (
        Predictor.load(tmp_path / "model.onnx"),
        Predictor.load(run_dir / "checkpoints" / "best.ckpt"),
    )
    for n in (1, 7):
        raw = torch.rand(n, *onnx_model.spec.inputs["input_shape"])
        assert (onnx_model(raw) - torch_model(raw)).abs().max() <= 1e-4


def test_cnn_export_on_the_test_split_then_on_generated_inputs(tmp_path, caplog):
    data_dir = tmp_path / "data"
    write_mnist(data_dir, n_train=60, n_test=30)
    run_dir = tmp_path / "run"
    overrides = (
        "model=cnn",
        "model.channels=[4,8]",
        "model.hidden_size=16",
        "dataset=mnist",
        f"paths.data_dir={data_dir}",
    )
    trained = train(make_config(*overrides, "trainer.max_epochs=1"), run_dir)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    result, _ = check_export(ckpt, tmp_path, caplog)
    assert result["inputs"] == "the test split (30 inputs)"
    assert result["onnx/acc"] == pytest.approx(trained["test/acc"], abs=1e-4)

    data_dir.rename(tmp_path / "moved")
    result, _ = check_export(ckpt, tmp_path, caplog)
    assert result["inputs"] == "64 generated inputs" and "onnx/acc" not in result


def train_csv_model(tmp_path) -> tuple:
    """A model trained on ``write_csv``'s table (missing values imputed): (its CSV, its best checkpoint)."""
    source = write_csv(tmp_path / "people.csv")
    overrides = ("dataset=csv", f"dataset.path={source}", "dataset.target=label", "dataset.missing=impute")
    train(make_config(*overrides, "trainer.max_epochs=2"), tmp_path / "run")
    return source, tmp_path / "run" / "checkpoints" / "best.ckpt"


def test_csv_model_export_fills_missing_values_in_the_graph(tmp_path, caplog):
    _, ckpt = train_csv_model(tmp_path)
    check_export(ckpt, tmp_path, caplog)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    spec = Predictor.load(ckpt).spec
    raw = torch.randn(4, *spec.inputs["input_shape"])
    raw[:, 0] = float("nan")  # age missing: the training mean is filled in
    filled = raw.clone()
    filled[:, 0] = spec.input_kind().fill()[0]
    outputs = session.run(None, {"input": raw.numpy()})[0]
    assert outputs == pytest.approx(session.run(None, {"input": filled.numpy()})[0], abs=1e-6)
    assert torch.isfinite(torch.from_numpy(outputs)).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    "model", [["model=resnet"], ["model=torchvision", "model.name=resnet18"]], ids=["resnet", "torchvision"]
)
def test_resnets_export(tmp_path, monkeypatch, caplog, model):
    _, md5s = write_cifar10(tmp_path / "data", per_batch=4)
    accept_cifar10_checksums(monkeypatch, md5s)
    run_dir = tmp_path / "run"
    trained = train(
        make_config(*model, "dataset=cifar10", f"paths.data_dir={tmp_path / 'data'}", "trainer.max_epochs=1"),
        run_dir,
    )
    result, _ = check_export(run_dir / "checkpoints" / "best.ckpt", tmp_path, caplog)
    assert result["onnx/acc"] == pytest.approx(trained["test/acc"], abs=1e-4)


class Eigenvalues(nn.Module):
    """A layer ONNX has no operator for."""

    def forward(self, x):
        return torch.linalg.eigvals(x.view(-1, 4, 4)).real.flatten(1)


def test_a_layer_that_cannot_be_exported_is_named():
    spec = InputSpec("multiclass", 16, None, "image", {"input_shape": [1, 4, 4], "mean": [0.0], "std": [1.0]})
    model = InferenceModel(spec, nn.Sequential(nn.Flatten(), nn.Linear(16, 16), Eigenvalues())).eval()
    with pytest.raises(CheckpointError) as error:
        to_onnx(model, spec.input_kind())
    message = str(error.value)
    assert "\n" not in message
    assert "layer 2 (Eigenvalues) uses aten.linalg_eig" in message and "serve.py" in message


def test_export_never_writes_over_the_runs_files(digits_run):
    run_dir, _ = digits_run
    before = (run_dir / "metrics.json").read_bytes()
    with pytest.raises(CheckpointError, match="is a file of the training run"):
        run_export(run_dir / "checkpoints" / "best.ckpt", f"output={run_dir / 'metrics.json'}")
    assert (run_dir / "metrics.json").read_bytes() == before
