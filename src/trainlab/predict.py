"""Use a trained model: predict on files from the checkpoint alone, or evaluate its test split.

Predicting (``input=...``) needs nothing but the checkpoint: its ``InputSpec`` says how to read and
preprocess the inputs, its config and weights give the model. Evaluating the test split (``input`` null)
rebuilds the training data set, so it needs the training data.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from torch import nn

from trainlab import checkpoint
from trainlab.dataloader import BatchedData, InputSpec
from trainlab.dataloader.inputs import read_inputs
from trainlab.devices import pick_device
from trainlab.errors import CheckpointError, DataError
from trainlab.progress import format_metrics
from trainlab.run import build_data, build_model
from trainlab.tasks import Task
from trainlab.trainer import evaluate
from trainlab.visuals import confusion_matrix_image

log = logging.getLogger(__name__)


def load_model(ckpt_path: str | Path, device: torch.device | str) -> tuple[DictConfig, InputSpec, nn.Module]:
    """The config, input spec and trained model of a checkpoint, from the checkpoint alone."""
    state = checkpoint.load(ckpt_path, map_location="cpu")
    cfg = checkpoint.trusted_config(state, ckpt_path)
    if "input_spec" not in state:
        raise CheckpointError(f"{ckpt_path} has no input spec (written by an older trainlab); train it again")
    spec = InputSpec.from_dict(state["input_spec"])
    model = build_model(cfg, spec.input_shape, spec.task_object().num_outputs, pretrained=False)
    checkpoint.load_weights(model, state, ckpt_path)
    return cfg, spec, model.to(device).eval()


def load_trained(ckpt_path: str | Path, device: torch.device | str) -> tuple[DictConfig, BatchedData, nn.Module]:
    """The checkpoint's model and its training data set, rebuilt from the config inside it (which needs the
    training data), checked to preprocess as the checkpoint's input spec says."""
    cfg, spec, model = load_model(ckpt_path, device)
    try:
        data = build_data(cfg)
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
    return cfg, data.to(device), model


def predict(cfg: DictConfig) -> dict[str, Any]:
    """``input`` null: the test split's metrics (the training run's ``test/...``); else predictions."""
    device = pick_device(cfg.device)
    ckpt_path = Path(to_absolute_path(cfg.ckpt))
    if cfg.input is None:
        _, data, model = load_trained(ckpt_path, device)
        metrics = evaluate(model, data.batches("test"), data.task, "test", device)
        output = (
            Path(to_absolute_path(cfg.output)) if cfg.output else ckpt_path.parent.parent / "predict_metrics.json"
        )
        output.write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("test metrics of %s: %s (written to %s)", ckpt_path, format_metrics(metrics), output)
        return metrics

    _, spec, model = load_model(ckpt_path, device)
    task = spec.task_object()
    names, raw, targets = read_inputs(spec, Path(to_absolute_path(cfg.input)))
    x = spec.normalize(raw.to(device))
    with torch.no_grad():
        outputs = torch.cat([model(x[i : i + cfg.batch_size]) for i in range(0, len(x), cfg.batch_size)])
    output = Path(to_absolute_path(cfg.output or "predictions.csv"))
    write_predictions(output, names, outputs, task, spec.class_names)
    log.info("wrote %d predictions to %s", len(names), output)
    if targets is None:
        return {}
    metrics = evaluate(model, [(x, targets.to(device))], task, "input", device)
    log.info("metrics on %s: %s", cfg.input, format_metrics(metrics))
    if task.is_classification:
        picture = output.with_name(f"{output.stem}_confusion_matrix.png")
        confusion_matrix_image(task.predict(outputs), targets, spec.class_names).save(picture)
        log.info("confusion matrix: %s", picture)
    return metrics


def write_predictions(path: Path, names: list[str], outputs: torch.Tensor, task: Task, classes: list[str]) -> None:
    """CSV rows: the input's name, the prediction and, for classifiers, one probability per class."""
    predictions = task.predict(outputs).cpu()
    header = ["input", "prediction"]
    rows: list[list[Any]] = [[name, p.item()] for name, p in zip(names, predictions, strict=True)]
    if task.is_classification:
        header[1:] = ["prediction", "label"] + [f"prob_{c}" for c in classes]
        probabilities = task.probabilities(outputs).cpu()
        rows = [
            [name, int(p), classes[int(p)], *(f"{v:.6f}" for v in probs.tolist())]
            for name, p, probs in zip(names, predictions, probabilities, strict=True)
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
