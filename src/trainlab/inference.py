"""Using a trained model from its checkpoint alone, or from its ONNX export: the one loader that predict,
export and serve share.

Loading is safe: ``checkpoint.load`` reads tensors and plain data only (``weights_only=True``), the config
is refused unless it is plain data naming allowed classes only (``stored_config.trusted_config``), and only
its ``model`` node is instantiated, after it was built on the meta device and found to fit the stored
weights (``stored_config.check_model``). The test split, which needs the training data, is rebuilt from the
``dataset`` and ``cv`` nodes alone (never downloaded, never augmented).

A ``Predictor`` takes raw inputs (what the spec's kind of input reads: images in [0, 1] at the trained size,
encoded table rows with NaN for a missing value...) and returns the model's outputs: the kind's
preprocessing is part of the model it runs (``InferenceModel``), in torch and in the ONNX graph alike.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from trainlab import checkpoint, stored_config
from trainlab.dataloader import BatchedData, InputSpec
from trainlab.dataloader.base import Inputs, as_tuple, call
from trainlab.dataloader.tensors import on_device
from trainlab.errors import CheckpointError, DataError
from trainlab.tasks import Task

log = logging.getLogger(__name__)

# The keys of an exported ONNX model's metadata_props (JSON text each).
INPUT_SPEC_KEY, CLASSES_KEY, METRICS_KEY = "trainlab.input_spec", "trainlab.classes", "trainlab.test_metrics"


class InferenceModel(nn.Module):
    """A trained model behind its kind's input preprocessing: raw inputs -> model inputs (for images and
    tables: missing values filled, normalised) -> the model's outputs. What ``Predictor`` runs and what
    ``export`` writes as ONNX."""

    def __init__(self, spec: InputSpec, model: nn.Module):
        super().__init__()
        self.preprocessing = spec.input_kind().preprocessing()
        self.model = model

    def forward(self, *raw: torch.Tensor) -> torch.Tensor:
        return call(self.model, self.preprocessing(*raw))


def load_model(ckpt_path: str | Path, device: torch.device | str) -> tuple[DictConfig, InputSpec, nn.Module]:
    """The config, input spec and trained model of a checkpoint, from the checkpoint alone; only the model
    node of its config is built."""
    from trainlab.run import build_model

    state = checkpoint.load(ckpt_path, map_location="cpu")
    cfg = stored_config.trusted_config(state, ckpt_path)
    spec = stored_config.check_model(cfg.model, state, ckpt_path)
    model = build_model(cfg, spec, pretrained=False)
    checkpoint.load_weights(model, state, ckpt_path)
    return cfg, spec, model.to(device).eval()


def load_test_data(cfg: DictConfig, spec: InputSpec, ckpt_path: str | Path) -> BatchedData:
    """The data set of a checkpoint's config (``load_model``'s, trusted), to evaluate its test split: built
    from its ``dataset`` and ``cv`` nodes alone (no augmentation, no download), and checked to preprocess as
    the checkpoint's input spec says. Needs the training data: a ``DataError`` that says so when it is
    absent."""
    from trainlab.run import build_data

    try:
        data = build_data(cfg, augment=False, **({"download": False} if "download" in cfg.dataset else {}))
    except DataError as error:
        raise DataError(
            f"evaluating the test split rebuilds the training data set, which failed: {error}. "
            "To predict without the training data pass input=<image, folder or CSV>"
        ) from None
    changed = spec.difference(data.input_spec())
    if changed:
        raise DataError(
            f"the training data of {ckpt_path} has changed since training (its {changed} differs), so its test "
            "split is not the one the model was tested on; predict on files with input=<...> instead"
        )
    return data


def load_trained(ckpt_path: str | Path, device: torch.device | str) -> tuple[DictConfig, BatchedData, nn.Module]:
    """The checkpoint's model and its training data set on ``device`` (``load_test_data``)."""
    cfg, spec, model = load_model(ckpt_path, device)
    return cfg, load_test_data(cfg, spec, ckpt_path).to(device), model


def run_dir_of(path: Path) -> Path | None:
    """The training run dir a checkpoint lies in (``<run>/checkpoints/<name>.ckpt``), or None."""
    run_dir = path.resolve().parent.parent
    if path.resolve().parent.name == "checkpoints" and (run_dir / "metrics.json").is_file():
        return run_dir
    return None


def run_test_metrics(ckpt_path: Path) -> dict[str, float]:
    """The training run's ``test/...`` metrics: those the checkpoint carries (``best.ckpt`` once the run has
    tested it, wherever it was copied), else those of the ``metrics.json`` of the run dir it lies in; empty
    where neither has them."""
    stored = checkpoint.load(ckpt_path, mmap=True).get("test_metrics")  # mmap: the weights stay unread
    if stored is not None:
        if not isinstance(stored, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in stored.items()
        ):
            raise CheckpointError(f"{ckpt_path} has test_metrics that are not metric names and numbers")
        return stored
    run_dir = run_dir_of(ckpt_path)
    if run_dir is None:
        return {}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {key: value for key, value in metrics.items() if key.startswith("test/")}


def score(task: Task, outputs: torch.Tensor, targets: torch.Tensor, prefix: str) -> dict[str, float]:
    """The metrics of outputs already computed, keyed ``<prefix>/<name>``: the trainer's ``evaluate`` of the
    identity on them, so that they are the very metrics of training."""
    from trainlab.trainer import evaluate

    return evaluate(nn.Identity(), [(outputs, targets)], task, prefix, torch.device("cpu"))


class Predictor:
    """A trained model that takes raw inputs. ``Predictor.load(path)`` picks the backend by the file: a
    ``.ckpt`` runs in torch, an ``.onnx`` in ONNX Runtime; both answer the same."""

    backend: str

    def __init__(self, source: Path, spec: InputSpec, test_metrics: dict[str, float]):
        self.source, self.spec, self.test_metrics = source, spec, test_metrics
        self.task: Task = spec.task_object()
        self.kind = spec.input_kind()

    @staticmethod
    def load(path: str | Path, device: str = "auto", num_threads: int | None = None) -> Predictor:
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            return OnnxPredictor(path, device, num_threads)
        return TorchPredictor(path, device, num_threads)

    def __call__(self, raw: Inputs) -> torch.Tensor:
        """The model's outputs (N, outputs) on the CPU for N raw inputs (as the spec's kind reads them)."""
        return self.forward(self.check(raw))

    def check(self, raw: Inputs) -> Inputs:
        """``raw`` as the model takes it, or a ``DataError`` saying how it does not fit (``InputKind.check``)."""
        return self.kind.check(raw)

    def forward(self, raw: Inputs) -> torch.Tensor:
        raise NotImplementedError

    def answers(self, outputs: torch.Tensor) -> list[dict[str, Any]]:
        """One answer per input: ``label``, ``class_index`` and ``probabilities`` (per class name) for
        classifiers, ``value`` (in the target's units) for regression."""
        predictions = self.task.predict(outputs).tolist()
        if not self.task.is_classification:
            return [{"value": value} for value in predictions]
        names = self.spec.class_names
        return [
            {"label": names[index], "class_index": index, "probabilities": dict(zip(names, probs, strict=True))}
            for index, probs in zip(predictions, self.task.probabilities(outputs).tolist(), strict=True)
        ]

    def metadata(self) -> dict[str, Any]:
        return {
            "task": self.spec.task,
            "classes": self.spec.class_names if self.task.is_classification else None,
            "input_spec": self.spec.to_dict(),
            "test_metrics": self.test_metrics,
            "backend": self.backend,
            "model": self.source.name,
        }


class TorchPredictor(Predictor):
    backend = "torch"

    def __init__(self, path: Path, device: str = "auto", num_threads: int | None = None):
        from trainlab.devices import pick_device

        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = pick_device(device)
        _, spec, model = load_model(path, self.device)
        super().__init__(path, spec, run_test_metrics(path))
        self.model = InferenceModel(spec, model).to(self.device).eval()

    def forward(self, raw: Inputs) -> torch.Tensor:
        with torch.inference_mode():
            return call(self.model, on_device(raw, self.device)).float().cpu()


class OnnxPredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, path: Path, device: str = "auto", num_threads: int | None = None):
        import onnxruntime
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; export one with python export.py ckpt=<checkpoint>")
        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        available = onnxruntime.get_available_providers()
        gpu = device != "cpu" and "CUDAExecutionProvider" in available
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
            meta = self.session.get_modelmeta().custom_metadata_map
            spec = InputSpec.from_dict(json.loads(meta[INPUT_SPEC_KEY]))
        except (ort_errors.Fail, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph) as error:
            raise CheckpointError(f"{path} is not a readable ONNX model ({str(error).splitlines()[0]})") from None
        except (KeyError, json.JSONDecodeError):
            raise CheckpointError(
                f"{path} has no trainlab input spec in its metadata; export it with export.py"
            ) from None
        super().__init__(path, spec, json.loads(meta.get(METRICS_KEY, "{}")))
        self.input_names = [value.name for value in self.session.get_inputs()]

    def forward(self, raw: Inputs) -> torch.Tensor:
        feeds = {name: tensor.numpy() for name, tensor in zip(self.input_names, as_tuple(raw), strict=True)}
        return torch.from_numpy(self.session.run(None, feeds)[0])


RUN_FILES = ("checkpoints", "tensorboard", ".hydra", "metrics.json")  # what a training run wrote


def beside(ckpt_path: Path, name: str) -> Path:
    """``name`` in the run dir the checkpoint lies in, else in the current folder: where predict's metrics
    and an export go by default."""
    return (run_dir_of(ckpt_path) or Path.cwd()) / name


def output_path(given: str | Path | None, default: Path) -> Path:
    """Where predict or export writes: ``given`` (``output=``), else ``default``; never over a training run's
    own files (its checkpoints, TensorBoard events, config or metrics.json)."""
    if given is None:
        return default
    path = Path(given).resolve()
    for folder in path.parents:
        if (folder / "checkpoints").is_dir() and (folder / "metrics.json").is_file():
            part = path.relative_to(folder).parts[0]
            if part in RUN_FILES:
                raise CheckpointError(
                    f"output={given} is a file of the training run in {folder} ({part}); choose another output"
                )
    return path
